require ["envelope", "fileinto"];
if envelope :is "from" "joe@example.com" { fileinto "env-joe"; }
if envelope :domain "to" "ex.org" { fileinto "env-to-ex"; }
if envelope :localpart :matches "from" "*+*" { fileinto "env-plus"; }
