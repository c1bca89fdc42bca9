require "reject";
if size :over 10K {
    reject text:
Please do not send me large attachments.
..Put your file on a server.
.
;
}
