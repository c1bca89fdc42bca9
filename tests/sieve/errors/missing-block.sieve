# error at line 3
keep;
if true keep;
