//! Outbound SMTP over a socket: drives the sans-IO [`Client`] for one
//! transaction to the smarthost, streaming the body from its queue file
//! through the dot-stuffer.
//!
//! Place in the pipeline: a transport of the delivery engine. Returns one
//! outcome per recipient; connection failures and timeouts are transient.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::io::BufferedFile;
use glommio::net::TcpStream;

use crate::config::Config;
use crate::deliver::dotstuff::DotStuffer;
use crate::queue::{Body, Envelope};
use crate::smtp::client::{Client, ClientEvent, ClientParams, RcptOutcome, Transaction};
use crate::smtp::reply::{Enhanced, Reply};

/// Body bytes read from the queue file at a time.
const BODY_READ_BYTES: usize = 64 * 1024;
/// Reply bytes read from the server at a time.
const READ_BYTES: usize = 16 * 1024;

/// Delivers `env` to the recipients at `indexes` through the smarthost.
pub async fn deliver(config: &Config, body_path: &Path, env: &Envelope, indexes: &[usize]) -> Vec<RcptOutcome> {
    let all = |reply: Reply| indexes.iter().map(|_| RcptOutcome::Transient(reply.clone())).collect();
    let Some(smarthost) = config.delivery.smarthost.as_deref() else {
        return all(Reply::new(451, Enhanced(4, 4, 4), "no route: delivery.smarthost unset"));
    };
    let connect = TcpStream::connect_timeout(smarthost, config.delivery.connect_timeout.0).await;
    let mut stream = match connect {
        Ok(s) => s,
        Err(e) => {
            return all(Reply::new(451, Enhanced(4, 4, 1), format!("connect to {smarthost}: {e}")));
        }
    };
    let txn = Transaction {
        reverse_path: env.sender.clone(),
        recipients: indexes.iter().map(|&i| env.recipients[i].address.clone()).collect(),
        size_bytes: env.size_bytes,
        body_8bit: env.body_8bit,
        smtputf8: env.smtputf8,
    };
    let params = ClientParams::new(config.helo_name().to_string());
    let block_timeout = params.timeouts.data_block;
    let mut client = Client::new(params, txn, Instant::now());
    let mut buf = vec![0u8; READ_BYTES];
    let outcome = loop {
        match client.poll(Instant::now()) {
            ClientEvent::NeedInput => {
                let out = client.take_output();
                if !out.is_empty() && stream.write_all(&out).await.is_err() {
                    client.on_connection_lost();
                    continue;
                }
                let wait = client.deadline().saturating_duration_since(Instant::now());
                let read = async { Some(stream.read(&mut buf).await) };
                let timer = async {
                    glommio::timer::sleep(wait).await;
                    None
                };
                match futures_lite::future::or(read, timer).await {
                    Some(Ok(0)) | Some(Err(_)) => client.on_connection_lost(),
                    Some(Ok(n)) => client.feed(&buf[..n]),
                    None => client.on_timeout(Instant::now()),
                }
            }
            ClientEvent::SendBody => {
                let out = client.take_output();
                match send_body(&mut stream, &out, &env.body, body_path, &mut client, block_timeout).await {
                    Ok(()) => client.body_sent(),
                    Err(_) => client.on_connection_lost(),
                }
            }
            ClientEvent::Done(outcome) => break outcome,
        }
    };
    let out = client.take_output();
    if !out.is_empty() {
        let _ = glommio::timer::timeout(Duration::from_secs(5), async {
            let _ = stream.write_all(&out).await;
            Ok(())
        })
        .await;
    }
    let _ = stream.close().await;
    outcome.recipients
}

/// Writes pending commands, then the dot-stuffed content and its
/// terminator. Each block must be written within the client's data-block
/// timeout (RFC 5321 §4.5.3.2.5), which every written block restarts.
async fn send_body(
    stream: &mut TcpStream,
    pending: &[u8],
    body: &Body,
    body_path: &Path,
    client: &mut Client,
    block_timeout: Duration,
) -> std::io::Result<()> {
    write_within(stream, pending, block_timeout).await?;
    let mut stuffer = DotStuffer::new();
    let mut wire = Vec::with_capacity(BODY_READ_BYTES + BODY_READ_BYTES / 8);
    match body {
        Body::Inline(bytes) => {
            for chunk in bytes.chunks(BODY_READ_BYTES) {
                wire.clear();
                stuffer.encode(chunk, &mut wire);
                write_within(stream, &wire, block_timeout).await?;
                client.body_progress(Instant::now());
            }
        }
        Body::File { .. } => {
            let file = BufferedFile::open(body_path).await.map_err(std::io::Error::from)?;
            let mut offset_bytes = 0u64;
            loop {
                let chunk = file.read_at(offset_bytes, BODY_READ_BYTES).await.map_err(std::io::Error::from)?;
                if chunk.is_empty() {
                    break;
                }
                offset_bytes += chunk.len() as u64;
                wire.clear();
                stuffer.encode(&chunk, &mut wire);
                write_within(stream, &wire, block_timeout).await?;
                client.body_progress(Instant::now());
            }
            let _ = file.close().await;
        }
    }
    wire.clear();
    stuffer.finish(&mut wire);
    write_within(stream, &wire, block_timeout).await
}

async fn write_within(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    glommio::timer::timeout(timeout, async { Ok(stream.write_all(bytes).await) })
        .await
        .map_err(std::io::Error::from)?
}
