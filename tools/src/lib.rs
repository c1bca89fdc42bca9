//! Shared code of ringpost's load tools.
//!
//! Three binaries ship with ringpost, as smtp-source and smtp-sink ship
//! with Postfix: `ringpost-blast` (an SMTP load generator), `ringpost-sink`
//! (an SMTP server that accepts and discards) and `seekbench` (compares the
//! disk cost of queue layouts). The protocol parts here are sans-IO state
//! machines and parsers; the socket and disk drivers live in `blast`,
//! `sink_server` and `seek`.

pub mod blast;
pub mod dist;
pub mod message;
pub mod reply;
pub mod rng;
pub mod seek;
pub mod sink;
pub mod sink_server;
pub mod sys;
