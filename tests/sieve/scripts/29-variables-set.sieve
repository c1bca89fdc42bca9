require ["variables", "fileinto"];
set "folder" "Lists";
set :lower "sub" "MiXeD";
set :upper "up" "MiXeD";
set :upperfirst "uf" "word";
set :lowerfirst "lf" "WORD";
set :length "len" "${folder}";
fileinto "${folder}.${sub}.${up}.${uf}.${lf}.${len}";
