require ["variables", "fileinto"];
set :quotewildcard "pat" "WIN $$$*";
if header :matches "subject" "${pat}" { fileinto "quoted-matched"; }
set "raw" "WIN*";
if header :matches "subject" "${raw}" { fileinto "raw-matched"; }
