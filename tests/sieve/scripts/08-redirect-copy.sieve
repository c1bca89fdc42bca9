require "copy";
if not header :is "x-spam-flag" "YES" { redirect :copy "backup@elsewhere.example"; }
