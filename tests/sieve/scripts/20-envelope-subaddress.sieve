# Adapted from Pigeonhole examples/subaddress.rfc5233.sieve.
require ["envelope", "subaddress", "fileinto"];
if envelope :user "to" "postmaster" {
    fileinto "inbox.postmaster";
    stop;
}
if envelope :detail "to" "lists" {
    fileinto "inbox.lists";
}
if envelope :detail "from" "dev" {
    redirect "dev-archive@ex.org";
}
if envelope :user "to" "me" { fileinto "user-me"; }
