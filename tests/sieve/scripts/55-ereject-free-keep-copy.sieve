# keep with fileinto :copy and redirect :copy: the explicit keep only.
require ["fileinto", "copy"];
fileinto :copy "INBOX";
redirect :copy "copy@elsewhere.example";
if exists "list-id" { keep; }
