# Address parsing: quoted local parts, source routes, comments between
# tokens, items that are not addresses, empty groups.
require ["fileinto", "variables", "relational", "comparator-i;ascii-numeric", "subaddress"];
if address :count "eq" :comparator "i;ascii-numeric" "to" "4" { fileinto "to-4"; }
if address :count "eq" :comparator "i;ascii-numeric" "cc" "1" { fileinto "cc-1"; }
if address :count "eq" :comparator "i;ascii-numeric" "cc" "2" { fileinto "cc-2"; }
if address :is "to" "\"quoted local\"@ex.org" { fileinto "quoted-all"; }
if address :localpart :is "to" "quoted local" { fileinto "quoted-localpart"; }
if address :is "to" "routed@ex.org" { fileinto "routed"; }
if address :is "to" "me@ex.org" { fileinto "spaced"; }
if address :is :detail "to" "work" { fileinto "detail"; }
if address :is "from" "john.doe@example.com" { fileinto "from"; }
if address :is "cc" "broken-address-without-domain" { fileinto "broken"; }
if address :matches "cc" "*" { fileinto "cc-first-${0}"; }
if address :matches "sender" "owner-*@*" { fileinto "sender-${1}"; }
if address :matches ["reply-to", "resent-from"] "*" { fileinto "other-${0}"; }
