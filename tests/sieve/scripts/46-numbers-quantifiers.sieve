require "fileinto";
if size :over 17K { fileinto "over-17k"; }
if size :under 18k { fileinto "under-18k"; }
if size :over 0 { fileinto "nonempty"; }
