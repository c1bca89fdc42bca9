require "fileinto";
if exists "received" {
    if header :contains "received" "lists" {
        fileinto "via-lists";
        stop;
    }
    fileinto "received";
}
fileinto "end";
