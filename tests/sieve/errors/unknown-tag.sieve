# error at line 2
if header :frob "subject" "x" { discard; }
