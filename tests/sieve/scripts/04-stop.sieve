# stop ends the script before the discard.
stop;
discard;
