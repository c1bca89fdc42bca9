require "fileinto";
if address :localpart :is "from" "joe" { fileinto "local-joe"; }
if address :domain :is "from" "EXAMPLE.COM" { fileinto "domain-example"; }
if address :all :is "from" "joe@example.com" { fileinto "all-joe"; }
