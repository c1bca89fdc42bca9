require ["variables", "fileinto"];
if header :matches ["to", "cc"] ["*@lists.example.org", "*ex.org*"] {
    fileinto "first-${1}";
}
if address :matches :domain ["to", "cc"] ["*.example.*", "ex.???"] {
    fileinto "domain-${1}-${2}";
}
