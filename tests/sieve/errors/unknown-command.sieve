# error at line 3
require "fileinto";
frobnicate "x";
