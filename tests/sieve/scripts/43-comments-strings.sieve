/* A bracketed comment
   over several lines */
require ["fileinto"]; # hash comment
if header :is "subject" "Re: [dev] patch review: parser fixes" { fileinto "quote\"d"; }
if header :contains "subject" "\[dev\]" { fileinto "back\\slash"; }
if header :contains "subject" text:
patch
.
{ fileinto "never"; }
