# error at line 10 (the first of several)
# Adapted from Pigeonhole tests/compile/errors/address-part.sieve.
/*
 * Address part errors
 *
 * Total errors: 2 (+1 = 3)
 */

# Duplicate address part (1)
if address :all :comparator "i;octet" :domain "from" "STEPHAN" {

	# Duplicate address part (2)
	if address :domain :localpart :comparator "i;octet" "from" "friep.example.com" {
		keep;
	}

	stop;
}

