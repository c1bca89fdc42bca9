# RFC 5228 section 2.7.3: the default comparator is i;ascii-casemap, for
# the "string" test (RFC 5229 section 5) as for every other. Pigeonhole
# 0.5.19 compares "string" with i;octet unless told otherwise; ringpost
# uses i;ascii-casemap.
require ["variables", "fileinto"];
if string :is "Hello" "hello" { fileinto "matched"; }
