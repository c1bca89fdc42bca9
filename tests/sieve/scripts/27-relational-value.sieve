require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "10" { fileinto "spam-high"; }
elsif header :value "gt" :comparator "i;ascii-numeric" "x-spam-score" "1" { fileinto "spam-mid"; }
if header :value "eq" :comparator "i;ascii-numeric" "x-count" "42" { fileinto "count-42"; }
if header :value "ne" :comparator "i;ascii-numeric" "x-count" "7" { fileinto "count-not-7"; }
if header :value "le" "subject" "b" { fileinto "subject-le-b"; }
