//! Delivery: turning queued messages into deliveries (outbound SMTP,
//! Maildir) and, for the recipients that failed, into bounces.

pub mod attempt;
pub mod connections;
pub mod dsn;
pub mod lmtp;
pub mod maildir;
pub mod mtasts;
pub mod security;
pub mod pipe;
pub mod dotstuff;
pub mod engine;
pub mod outbound;
#[cfg(test)]
mod tests;
