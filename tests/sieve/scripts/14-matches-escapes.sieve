require "fileinto";
# \* and \? are literal characters in :matches keys.
if header :matches "subject" "*\\*\\*\\**" { fileinto "stars"; }
if header :matches "subject" "WIN \\$*" { fileinto "no-such-escape"; }
