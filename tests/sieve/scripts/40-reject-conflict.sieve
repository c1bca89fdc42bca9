# Pigeonhole tests/execute/errors/conflict-reject-fileinto.sieve: a
# runtime error, resolved with the implicit keep.
require ["reject", "fileinto"];
if header :contains "subject" "meeting" {
    reject "No nonsense in my mailbox.";
    fileinto "Spam";
}
