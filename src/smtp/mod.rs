//! SMTP protocol state machines, sans-IO: bytes and the current time in,
//! replies and events out. No sockets here; `src/ingress/` (server side) and
//! `src/deliver/` (client side) own the sockets and feed these machines.

pub mod reply;
pub mod address;
pub mod dsn;
pub mod received;
pub mod server;
pub mod client;
