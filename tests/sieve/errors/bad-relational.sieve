# error at line 3
require "relational";
if header :value "bogus" "x" "1" { discard; }
