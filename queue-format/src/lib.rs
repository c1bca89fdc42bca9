//! On-disk layout of ringpost's envelope logs: segment headers, records,
//! checksums. This crate does no I/O; `src/queue/` writes and reads the bytes
//! it defines. The log-structured queue fills it in.
