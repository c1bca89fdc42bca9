require "fileinto";
if header :matches "subject" "[*] *" { fileinto "bracketed"; }
elsif header :matches "subject" "*money*" { fileinto "money"; }
elsif header :matches "subject" "Au?o: *" { fileinto "auto"; }
