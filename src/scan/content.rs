//! What every content scanner is given and what it answers: the message as
//! stored in the queue (its inline bytes, or its body file read in
//! fixed-size chunks, never whole in memory), where the scanner listens,
//! and its verdict.
//!
//! Place in the pipeline: shared by the scanner kinds (`spamd`, `clamd`,
//! …) and by the scanning stage at the final dot (`crate::scan`), which
//! bounds their concurrency and applies their time limit and verdicts.

use std::path::PathBuf;

use crate::queue::{Body, BodyReader, Envelope, StoredBody};

/// Bytes read from a body file at a time.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Where a scanner listens: `"host:port"` or `"unix:/path"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScannerAddress {
    /// `host:port` (an IP address or a name resolved by the system).
    Tcp(String),
    Unix(PathBuf),
}

impl std::str::FromStr for ScannerAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<ScannerAddress, String> {
        match text.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Ok(ScannerAddress::Unix(PathBuf::from(path))),
            Some(_) => Err(format!("bad scanner address {text:?}: the socket path must be absolute")),
            None => crate::config::check_smarthost(text).map(|()| ScannerAddress::Tcp(text.to_string())),
        }
    }
}

impl std::fmt::Display for ScannerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScannerAddress::Unix(path) => write!(f, "unix:{}", path.display()),
            ScannerAddress::Tcp(hostport) => f.write_str(hostport),
        }
    }
}

/// The message a scanner reads: its envelope and its content as stored
/// (CRLF line ends, the Received header first), `size_bytes` long.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    pub env: &'a Envelope,
    /// Where a body file's or the body log's content is; unused for
    /// inline content.
    pub stored: &'a StoredBody,
}

impl Message<'_> {
    /// The content's size in octets.
    pub fn size_bytes(&self) -> u64 {
        self.env.size_bytes
    }

    /// The content in chunks of at most `CHUNK_BYTES`, in order.
    pub fn chunks(&self) -> Chunks<'_> {
        Chunks { body: &self.env.body, stored: self.stored, offset_bytes: 0, reader: None }
    }
}

/// Reads a message's content a chunk at a time.
pub struct Chunks<'a> {
    body: &'a Body,
    stored: &'a StoredBody,
    offset_bytes: u64,
    reader: Option<BodyReader>,
}

impl Chunks<'_> {
    /// The next chunk, `None` at the end.
    pub async fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        match self.body {
            Body::Inline(bytes) => {
                let start = usize::try_from(self.offset_bytes).unwrap_or(usize::MAX).min(bytes.len());
                let end = start.saturating_add(CHUNK_BYTES).min(bytes.len());
                self.offset_bytes = end as u64;
                Ok((start < end).then(|| bytes[start..end].to_vec()))
            }
            Body::File { .. } | Body::Log { .. } => {
                let stored = self.stored;
                let chunk = self.reader.get_or_insert_with(|| stored.reader()).read(CHUNK_BYTES).await?;
                if chunk.is_empty() {
                    return Ok(None);
                }
                self.offset_bytes += chunk.len() as u64;
                Ok(Some(chunk))
            }
        }
    }

    /// Closes the body file, if one was opened.
    pub async fn close(self) {
        if let Some(reader) = self.reader {
            reader.close().await;
        }
    }
}

/// What a scanner said about a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accept; `headers` (whole header lines without CRLF, e.g.
    /// `X-Spam-Status: No, score=1.2 required=5.0`) are added above the
    /// message at delivery; the stored content is never rewritten.
    Accept { headers: Vec<String>, score: Option<String> },
    /// Refuse the message: `reason` goes into the `550 5.7.1` text (the
    /// virus name, the spam score).
    Reject { reason: String, score: Option<String> },
    /// Try again later: `451 4.7.1` with `reason`.
    Tempfail { reason: String },
}
