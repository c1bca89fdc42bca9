//! ringpost: a thread-per-core Mail Transfer Agent for high-volume relays.
//! See docs/ARCHITECTURE.md for the pipeline and why it is shaped so.

pub mod config;
pub mod smtp;
