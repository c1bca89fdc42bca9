# error at line 3
require "variables";
set "bad name" "x";
