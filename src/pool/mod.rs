//! Bounded pools of blocking workers for back ends that are not async
//! (PostgreSQL, LDAP): at most `max_connections` open connections, a bounded
//! wait queue and a timeout, so that a slow or dead back end costs a 451 at
//! RCPT, never a hang.
//!
//! Place in the pipeline: behind `route::source::LookupSource` for the
//! network lookup sources.
