# Adapted from Pigeonhole examples/rfc3028.sieve (RFC 3028 section 9).
require ["fileinto", "reject"];
if size :over 1M {
    reject text:
Please do not send me large attachments.
.... Fred
.
;
    stop;
}
if header :is "Sender" "owner-ietf-mta-filters@imc.org" {
    fileinto "filter";
} elsif address :domain :is ["From", "To"] "example.com" {
    keep;
} elsif anyof (not address :all :contains ["To", "Cc", "Bcc"] "me@ex.org",
               header :matches "subject" ["*make*money*fast*", "*university*dipl*mas*"]) {
    fileinto "spam";
} else {
    fileinto "personal";
}
