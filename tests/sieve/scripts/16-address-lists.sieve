require "fileinto";
# Address lists with display names, groups and comments.
if address :is "to" "bob@ex.org" { fileinto "bob-in-group"; }
if address :is "to" "carol@example.net" { fileinto "carol"; }
if address :is ["to", "cc"] "me@ex.org" { fileinto "me"; }
if address :domain :is "to" "ex.org" { fileinto "to-ex"; }
