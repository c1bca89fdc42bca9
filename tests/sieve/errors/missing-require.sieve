# error at line 4
# fileinto used without require.
keep;
fileinto "x";
