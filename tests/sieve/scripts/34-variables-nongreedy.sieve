# Non-greedy wildcards (Pigeonhole tests/extensions/variables/match.svtest).
require ["variables", "fileinto"];
if string :matches "frop.......frop.........frop...." "?*frop*" {
    fileinto "m.${1}.${2}.${3}";
}
if string :matches "a b c d e f g" "? ? ? ? ? ? ?" {
    fileinto "n.${0000002}.${7}.${8}";
}
