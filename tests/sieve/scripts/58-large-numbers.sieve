require "fileinto";
if size :under 5G { fileinto "under-5g"; }
if size :over 18446744073709551615 { fileinto "never"; }
