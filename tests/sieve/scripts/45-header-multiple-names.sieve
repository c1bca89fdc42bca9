require "fileinto";
if header :contains ["x-spam-status", "x-spam-flag"] "yes" { fileinto "spam-any"; }
if header :is ["to", "cc"] "" { fileinto "empty-field"; }
if header :contains "received" "mail.ex.org" { fileinto "via-mx"; }
