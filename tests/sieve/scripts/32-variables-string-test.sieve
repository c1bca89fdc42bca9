require ["variables", "fileinto"];
set "a" "Hello";
if string :comparator "i;ascii-casemap" :is "${a}" "hello" { fileinto "casemap-equal"; }
if string :comparator "i;octet" :is "${a}" "hello" { fileinto "octet-equal"; }
if string :matches " ${a} " "*ll*" { fileinto "matches-${1}-${2}"; }
if string :contains ["x", "${a}"] "ell" { fileinto "contains"; }
