require "fileinto";
if address :contains ["to", "cc", "bcc"] "me" { fileinto "mentions-me"; }
if address :matches :localpart "from" "*+*" { fileinto "plus-sender"; }
