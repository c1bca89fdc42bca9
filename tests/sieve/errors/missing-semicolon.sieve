# error at line 3
require "fileinto";
fileinto "a"
keep;
