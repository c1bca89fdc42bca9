# error at line 3
keep;
elsif true { keep; }
