require "reject";
if header :is "x-spam-flag" "yes" { reject "Spam is not welcome here."; }
