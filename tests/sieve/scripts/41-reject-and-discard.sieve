require "reject";
if address :domain "from" "lottery.example" { discard; reject "No."; }
