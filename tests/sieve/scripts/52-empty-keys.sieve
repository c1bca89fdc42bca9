require "fileinto";
if header :contains "subject" "" { fileinto "has-subject"; }
if header :is "x-nope" "" { fileinto "never"; }
if address :contains "from" "" { fileinto "has-from"; }
if exists "LIST-ID" { fileinto "list-id-any-case"; }
