require ["variables", "fileinto"];
if address :matches "from" "*@*" {
    set "user" "${1}";
    set "domain" "${2}";
}
if string :is "${domain}" "" { fileinto "no-domain"; } else { fileinto "from.${domain}.${user}"; }
