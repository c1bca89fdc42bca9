require "fileinto";
fileinto "A";
fileinto "A";
keep;
keep;
redirect "x@elsewhere.example";
redirect "x@elsewhere.example";
