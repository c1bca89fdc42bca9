# error at line 2
require ["fileinto", "nonsense-ext"];
keep;
