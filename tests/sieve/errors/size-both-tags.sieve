# error at line 4

keep;
if size :over 1K :under 2K { discard; }
