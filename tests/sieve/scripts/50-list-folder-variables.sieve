require ["variables", "fileinto"];
if header :matches "subject" "*[*]*" {
    set :lower "list" "${2}";
    fileinto "lists.${list}";
} elsif header :matches "subject" ["Re: *", "fwd: *"] {
    fileinto "threads";
}
