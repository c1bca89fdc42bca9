# error at line 3
keep;
/* this comment
 never ends
