//! LMTP delivery (RFC 2033) to a local message store such as Dovecot: the
//! sans-IO client in LMTP mode (LHLO; after the final dot one reply per
//! accepted recipient, so each recipient gets its own outcome) over a unix
//! socket or TCP.
//!
//! Place in the pipeline: a transport of the delivery engine, chosen by a
//! `[[transport]]` rule with `transport = "lmtp"`. One connection per
//! delivery (a store is local; connection reuse buys little); at most the
//! rule's `max_connections` at once per shard.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::{TcpStream, UnixStream};

use crate::deliver::outbound::{drive, transaction, Content};
use crate::queue::{Envelope, StoredBody};
use crate::smtp::client::{Client, ClientParams, RcptOutcome, Transaction};
use crate::smtp::reply::{Enhanced, Reply};
use crate::tls::Stream;

/// Where the store listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LmtpTarget {
    Unix(PathBuf),
    /// "host:port".
    Tcp(String),
}

impl FromStr for LmtpTarget {
    type Err = String;

    /// `"unix:/path"` or `"host:port"`.
    fn from_str(text: &str) -> Result<LmtpTarget, String> {
        match text.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Ok(LmtpTarget::Unix(PathBuf::from(path))),
            Some(_) => Err(format!("bad LMTP target {text:?}: the socket path must be absolute")),
            None => crate::config::check_smarthost(text).map(|()| LmtpTarget::Tcp(text.to_string())),
        }
    }
}

impl std::fmt::Display for LmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmtpTarget::Unix(path) => write!(f, "unix:{}", path.display()),
            LmtpTarget::Tcp(hostport) => f.write_str(hostport),
        }
    }
}

/// Delivers `env` to the recipients at `indexes` through the store at
/// `target`; one outcome per index, in order. A store that cannot be
/// reached defers every recipient.
pub async fn deliver(
    target: &LmtpTarget,
    helo_name: &str,
    connect_timeout: Duration,
    stored: &StoredBody,
    env: &Envelope,
    indexes: &[usize],
) -> Vec<RcptOutcome> {
    let txn = transaction(env, indexes);
    let params = ClientParams { lmtp: true, ..ClientParams::new(helo_name.to_string()) };
    converse(target, params, connect_timeout, txn, Some(Content { stored, env })).await.0
}

/// A call-forward probe of the store: LHLO, `MAIL FROM:<sender>`, `RCPT
/// TO` for each of `recipients`, QUIT. The outcome of each recipient is
/// the reply to its RCPT; with `transcript`, the conversation too.
pub async fn probe(
    target: &LmtpTarget,
    helo_name: &str,
    connect_timeout: Duration,
    sender: &str,
    recipients: Vec<String>,
    transcript: bool,
) -> (Vec<RcptOutcome>, Vec<String>) {
    let txn = Transaction::probe(sender, recipients);
    let params = ClientParams { lmtp: true, transcript, ..ClientParams::new(helo_name.to_string()) };
    converse(target, params, connect_timeout, txn, None).await
}

/// One LMTP transaction on a connection of its own.
async fn converse(
    target: &LmtpTarget,
    params: ClientParams,
    connect_timeout: Duration,
    txn: Transaction,
    content: Option<Content<'_>>,
) -> (Vec<RcptOutcome>, Vec<String>) {
    let connected = match target {
        LmtpTarget::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix).map_err(std::io::Error::from),
        LmtpTarget::Tcp(hostport) => match hostport.parse::<std::net::SocketAddr>() {
            Ok(addr) => TcpStream::connect_timeout(addr, connect_timeout)
                .await
                .map(Stream::Plain)
                .map_err(std::io::Error::from),
            Err(_) => Err(std::io::Error::other("an LMTP host must be an IP address and port")),
        },
    };
    let mut stream = match connected {
        Ok(stream) => stream,
        Err(e) => {
            let reply = Reply::new(451, Enhanced(4, 4, 1), format!("connect to LMTP {target}: {e}"));
            return (txn.recipients.iter().map(|_| RcptOutcome::Transient(reply.clone())).collect(), Vec::new());
        }
    };
    let mut client = Client::new(params, txn, Instant::now());
    // Never asked for: LMTP runs without STARTTLS.
    let tls = crate::tls::client_config();
    let outcome = drive(&mut stream, &mut client, content, &Arc::clone(&tls), "localhost").await;
    let out = client.take_output();
    let _ = glommio::timer::timeout(Duration::from_secs(5), async {
        use futures_lite::AsyncWriteExt;
        if !out.is_empty() {
            let _ = stream.write_all(&out).await;
        }
        let _ = stream.close().await;
        Ok(())
    })
    .await;
    (outcome.recipients, outcome.transcript)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!("unix:/run/dovecot/lmtp".parse(), Ok(LmtpTarget::Unix("/run/dovecot/lmtp".into())));
        assert_eq!("127.0.0.1:24".parse(), Ok(LmtpTarget::Tcp("127.0.0.1:24".into())));
        assert!("unix:relative".parse::<LmtpTarget>().is_err());
        assert!("nohost".parse::<LmtpTarget>().is_err());
        assert_eq!(LmtpTarget::Unix("/x".into()).to_string(), "unix:/x");
    }
}
