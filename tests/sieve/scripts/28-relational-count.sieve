require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :count "ge" :comparator "i;ascii-numeric" "received" "3" { fileinto "many-hops"; }
if header :count "eq" :comparator "i;ascii-numeric" "x-count" "2" { fileinto "two-counts"; }
if address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] "3" { fileinto "many-rcpts"; }
if header :count "lt" :comparator "i;ascii-numeric" "x-nope" "1" { fileinto "none"; }
