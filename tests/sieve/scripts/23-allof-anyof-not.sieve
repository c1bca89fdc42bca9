require "fileinto";
if allof (header :contains "subject" "patch", exists "list-id") { fileinto "list-patch"; }
if anyof (header :is "x-spam-flag" "yes", header :contains "subject" "$$$") { fileinto "spammy"; }
if not anyof (exists "cc", exists "bcc") { fileinto "no-cc"; }
if allof (true, not false) { keep; }
