require "fileinto";
if header :contains "subject" "München" { fileinto "muenchen"; }
if header :contains "subject" "café" { fileinto "cafe"; }
if header :contains "from" "Jürgen" { fileinto "juergen"; }
if header :is "x-folded" "first part  second part" { fileinto "unfolded"; }
