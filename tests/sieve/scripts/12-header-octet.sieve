require "fileinto";
if header :comparator "i;octet" :is "Subject" "MEETING TOMORROW" { fileinto "octet-upper"; }
if header :comparator "i;octet" :contains "Subject" "Meeting" { fileinto "octet-exact"; }
