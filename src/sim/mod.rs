//! The deterministic simulation of one shard (TigerBeetle's VOPR as the
//! model): sessions, queue, runners and delivery on one glommio executor,
//! with a simulated clock, a simulated disk and a simulated network, every
//! choice taken from one seeded PRNG, so that a seed replays exactly.
//!
//! Place in the pipeline: a test harness around the whole of a shard's
//! path, ingress → queue → hand-off → delivery → next hop, and around its
//! restarts. It runs under `cargo test` (`SEEDS_DEFAULT` seeds) and, for
//! many more, `tests/sim-long`; a failing seed prints
//! `RINGPOST_SIM_SEED=N`, and that variable replays it alone.
//!
//! What is production code here, and what is the harness's:
//!
//! - **Production**: the SMTP server machine (`smtp::server::Server`) for
//!   every inbound session and for every next hop; the SMTP client machine
//!   (`smtp::client::Client`) for every delivery; the dot-stuffer
//!   (`deliver::dotstuff`); the whole queue (`Queue`, `MessageWriter`, the
//!   committers with group commit, recovery, the hand-off, the retry
//!   runners, the collector, the body check) on [`SimStorage`]; the clock
//!   (`Clock::simulated`).
//! - **Harness, mirroring production**: the session driver
//!   (`ingress::run_session` is bound to glommio sockets, the shard and its
//!   configuration; here a driver answers MAIL and RCPT with 250, streams
//!   content into the `MessageWriter` and commits at the final dot, as it
//!   does) and the delivery engine (`deliver::engine::Delivery::attempt`
//!   and `finish`, bound to the shard's `Deliverer`, DNS and sockets; here
//!   one attempt per permit takes from `Queue::take`, groups the pending
//!   recipients by next hop, runs one client machine per group, records
//!   each recipient's state, queues one bounce for the failed ones, then
//!   completes, or defers with `Queue::retry_delay`, retrying a record the
//!   queue refused every `QUEUE_ERROR_RETRY`, as `finish` does). Not
//!   covered: TLS, DNS, policy and scanners, Sieve, DSN formats (a bounce
//!   here is a marker, not RFC 3464), connection reuse, Maildir/LMTP/pipe.
//!
//! Simulated: clients that pipeline everything at once or dribble a few
//! octets at a time, pause, and drop the connection (also mid-DATA); next
//! hops that refuse the connection, drop it, answer 4xx or 5xx to RCPT or
//! to the dot, or accept; a disk with latency, failing fdatasyncs, failing
//! writes and ENOSPC, and crashes (everything dropped, the disk crashed
//! with unflushed sectors kept, lost or torn, the shard restarted by
//! recovery) at random moments.
//!
//! Invariants, checked after each seed (and the queue's bound at every
//! tick): every acknowledged message is delivered or bounced exactly once
//! per recipient, a second time only after a crash came between (SPEC
//! section 11, case 9; counted); a message dropped before its final dot is
//! never delivered; every delivered message is one whose commit began, with
//! the content its client sent; recovery never fails; the segments on disk
//! stay within SPEC section 13's bound; no panic; the queue drains.
//!
//! A second scenario, `world::run_outage`, runs the same world without
//! faults but with one next hop down for an hour of simulated time under
//! steady load, beside the same seed with every hop up: acceptance, the
//! index's size and the retry log's disk are compared (docs/simulation.md).

mod world;

#[cfg(test)]
mod tests;
