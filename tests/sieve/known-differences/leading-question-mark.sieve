# RFC 5228 section 2.7.1: "?" matches exactly one character, so "?xyz*"
# cannot match "Meeting tomorrow". Pigeonhole 0.5.19 matches it (it does
# not check the literal after a leading "?"); ringpost does not.
require "fileinto";
if header :matches "subject" "?xyz*" { fileinto "matched"; }
