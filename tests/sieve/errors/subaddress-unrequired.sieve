# error at line 4
require "envelope";

if envelope :detail "to" "x" { discard; }
