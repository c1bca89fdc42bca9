require "fileinto";
if header :contains "subject" "[dev]" {
    if header :contains "subject" "Re:" { fileinto "dev.replies"; }
    else { fileinto "dev"; }
} elsif header :contains "from" "lottery" {
    discard;
    stop;
} elsif size :over 10K {
    fileinto "big";
} else {
    if exists "auto-submitted" { fileinto "auto"; } elsif true { keep; }
}
