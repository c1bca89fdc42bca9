# Adapted from Pigeonhole tests/extensions/vacation/execute/action.sieve.
require "vacation";
vacation :addresses ["other@ex.org", "dev@lists.example.org"] "I am not at home today";
keep;
