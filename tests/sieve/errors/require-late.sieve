# error at line 3
keep;
require "fileinto";
