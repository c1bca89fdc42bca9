# The list name from List-Id (RFC 5229 section 3.2, Pigeonhole
# tests/extensions/variables/match.svtest "RFC - example").
require ["variables", "fileinto"];
if header :matches "List-Id" "*<*.*>" {
    fileinto "lists.${2}";
} elsif header :matches "subject" "* *" {
    fileinto "first-word.${1}";
}
