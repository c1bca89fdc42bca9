require ["comparator-i;ascii-numeric", "fileinto"];
if header :is :comparator "i;ascii-numeric" "x-count" "42" { fileinto "count-is-42"; }
if header :is :comparator "i;ascii-numeric" "x-spam-score" "12" { fileinto "score-12"; }
