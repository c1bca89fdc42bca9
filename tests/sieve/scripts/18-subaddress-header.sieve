require ["fileinto", "subaddress"];
if address :user "from" "alice" { fileinto "alice"; }
if address :detail "from" "dev" { fileinto "detail-dev"; }
if address :detail "cc" "lists" { fileinto "cc-detail-lists"; }
if address :detail "from" "" { fileinto "empty-detail"; }
