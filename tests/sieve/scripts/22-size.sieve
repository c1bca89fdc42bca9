require "fileinto";
if size :over 10K { fileinto "big"; }
if size :under 1k { fileinto "small"; }
if size :over 1M { fileinto "huge"; }
