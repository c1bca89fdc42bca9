require "fileinto";
if header :is "SUBJECT" "MEETING TOMORROW" { fileinto "exact"; }
