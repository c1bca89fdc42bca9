//! Routing: where an address goes, and therefore whether it is valid. One
//! ordered list of routers decides for delivery and, in verify mode (no side
//! effects), for RCPT-time checks (DESIGN.md, principle 3).
//!
//! Place in the pipeline: asked by ingress at RCPT (verify mode) and by the
//! delivery engine before each attempt. Table lookups go through
//! [`source::LookupSource`]; blocking back ends (PostgreSQL, LDAP) sit behind
//! the bounded pools of `crate::pool`.

pub mod source;
