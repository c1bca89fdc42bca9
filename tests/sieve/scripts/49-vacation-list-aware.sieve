require ["vacation", "fileinto"];
if exists "list-id" {
    fileinto "lists";
} else {
    vacation :days 1 :addresses ["me+lists@ex.org", "somebody@example.org"] :subject "Away: ${1}" "Away.";
}
