require ["fileinto", "copy"];
if header :contains "subject" ["patch", "meeting"] { fileinto :copy "Archive"; }
