# error at line 3
keep;
fileinto "never
closed;
