require ["variables", "relational", "comparator-i;ascii-numeric", "fileinto"];
if string :count "eq" :comparator "i;ascii-numeric" ["a", "", "b"] "2" { fileinto "two-nonempty"; }
set "n" "12";
if string :value "gt" :comparator "i;ascii-numeric" "${n}" "9" { fileinto "numeric-gt"; }
if string :value "gt" "${n}" "9" { fileinto "string-gt"; }
