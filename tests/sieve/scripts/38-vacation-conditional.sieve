require ["vacation", "fileinto"];
if header :contains "x-spam-flag" "YES" {
    discard;
} else {
    vacation :days 7 :from "me@ex.org" :handle "away-2026" :subject "Away" text:
I am away.
..Back soon.
.
;
}
