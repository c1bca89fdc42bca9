require "fileinto";
if exists "list-id" { fileinto "has-list-id"; }
if exists ["x-spam-flag", "x-spam-score"] { fileinto "has-both-spam"; }
if not exists "message-id" { fileinto "no-message-id"; }
