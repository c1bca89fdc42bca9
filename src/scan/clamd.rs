//! ClamAV's clamd as a content scanner: the message streamed with the
//! `zINSTREAM` command (each chunk framed by its length), clamd's one-line
//! answer turned into a verdict: clean (accept, with `X-Virus-Scanned`),
//! a virus found (refuse, naming it), or an error.
//!
//! Place in the pipeline: one scanner kind of the scanning stage at the
//! final dot (`crate::scan`), run on the shard's executor; the stage
//! bounds concurrency and applies the time limit. Connecting, sending the
//! content checked against its stored size and reading a bounded reply
//! are shared with `spamd`.
//!
//! The request: `zINSTREAM\0`, then each chunk of at most `CHUNK_BYTES`
//! as a 4-byte big-endian length and its octets, then a zero length.
//! What clamd 1.4.6 (Debian 12) answers, byte for byte, with a database of
//! one signature for the EICAR test string (`eicar.ndb`):
//!
//! ```text
//! clean:       stream: OK\0
//! EICAR:       stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0
//! too long:    INSTREAM size limit exceeded. ERROR\0      (past StreamMaxLength)
//! bad command: UNKNOWN COMMAND\0
//! ```
//!
//! and closes the connection. Past `StreamMaxLength` clamd may stop
//! reading before the whole message is sent: its answer is still read
//! after the failed write.

use futures_lite::AsyncWriteExt;

use crate::scan::content::{Message, ScannerAddress, Verdict};
use crate::scan::spamd::{connect, finish, printable, Content, Failure};

/// The longest reply read from clamd.
pub const MAX_REPLY_BYTES: usize = 4096;
/// The longest virus name put in a refusal's reason.
pub const MAX_NAME_BYTES: usize = 160;
/// The header added to a message clamd found clean.
pub const SCANNED_HEADER: &str = "X-Virus-Scanned: clamd";

/// One clamd scanner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClamdParams {
    pub address: ScannerAddress,
}

/// Scans `message` with the clamd at `params.address`. `Err` when clamd
/// cannot be reached, reports an error (a size limit, an unreadable
/// stream), or answers something else.
pub async fn scan(params: &ClamdParams, message: Message<'_>) -> Result<Verdict, String> {
    let (reply, _) = exchange(params, message).await.map_err(|e| format!("clamd {}: {e}", params.address))?;
    verdict(&reply).map_err(|e| format!("clamd {}: {e}", params.address))
}

async fn exchange(params: &ClamdParams, message: Message<'_>) -> Result<(Vec<u8>, bool), String> {
    let mut stream = connect(&params.address).await.map_err(|e| format!("connect: {e}"))?;
    let sent = async {
        stream.write_all(b"zINSTREAM\0").await.map_err(Failure::Write)?;
        let mut content = Content::new(&message);
        let result = async {
            while let Some(chunk) = content.next().await? {
                // At most CHUNK_BYTES: always fits the 32-bit length.
                let length = u32::try_from(chunk.len()).expect("chunk length").to_be_bytes();
                stream.write_all(&length).await.map_err(Failure::Write)?;
                stream.write_all(&chunk).await.map_err(Failure::Write)?;
            }
            stream.write_all(&0u32.to_be_bytes()).await.map_err(Failure::Write)
        }
        .await;
        content.close().await;
        result
    }
    .await;
    finish(&mut stream, sent, MAX_REPLY_BYTES, |reply| reply.contains(&0)).await
}

/// The verdict of a reply (up to and including its NUL).
fn verdict(reply: &[u8]) -> Result<Verdict, String> {
    let Some(end) = reply.iter().position(|&b| b == 0) else {
        return Err(match reply.is_empty() {
            true => "connection closed without a reply".to_string(),
            false => format!("connection closed within the reply {:?}", printable(reply, 200)),
        });
    };
    let line = &reply[..end];
    let text = std::str::from_utf8(line).ok().filter(|t| t.bytes().all(|b| (b' '..=b'~').contains(&b)));
    let Some(text) = text else {
        return Err(format!("unexpected reply {:?}", printable(line, 200)));
    };
    if let Some(result) = text.strip_prefix("stream: ") {
        if result == "OK" {
            return Ok(Verdict::Accept { headers: vec![SCANNED_HEADER.to_string()], score: None });
        }
        if let Some(name) = result.strip_suffix(" FOUND").filter(|name| !name.is_empty()) {
            let name = printable(name.as_bytes(), MAX_NAME_BYTES);
            return Ok(Verdict::Reject { reason: format!("virus {name} found"), score: None });
        }
    }
    match text.ends_with(" ERROR") {
        true => Err(format!("clamd answered {:?}", printable(line, 200))),
        false => Err(format!("unexpected reply {:?}", printable(line, 200))),
    }
}
