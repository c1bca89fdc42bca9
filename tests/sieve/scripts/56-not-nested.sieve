require "fileinto";
if not not not exists "list-id" { fileinto "no-list"; }
if anyof (allof (exists "from", not exists "x-spam-flag"), false) { fileinto "clean"; }
