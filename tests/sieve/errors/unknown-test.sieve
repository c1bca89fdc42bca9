# error at line 3

if foo "x" { keep; }
