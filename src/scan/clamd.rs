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

#[cfg(test)]
mod tests {
    use crate::queue::StoredBody;
    use std::thread::JoinHandle;

    use super::*;
    use crate::scan::content::CHUNK_BYTES;
    use crate::scan::spamd::tests::{content, in_file, inline, listen, Conn};
    use crate::testing;

    /// What the fake clamd received: the command (up to its NUL), each
    /// chunk's length, the chunks' octets, whether the zero length came.
    #[derive(Debug, Default)]
    struct Request {
        command: Vec<u8>,
        chunks: Vec<usize>,
        content: Vec<u8>,
        terminated: bool,
    }

    fn read_request(conn: &mut dyn Conn, max_chunks: usize) -> Request {
        let mut request = Request::default();
        let mut byte = [0u8];
        while conn.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != 0 && request.command.len() < 100 {
            request.command.push(byte[0]);
        }
        while request.chunks.len() < max_chunks {
            let mut length = [0u8; 4];
            if conn.read_exact(&mut length).is_err() {
                break;
            }
            let length = u32::from_be_bytes(length) as usize;
            if length == 0 {
                request.terminated = true;
                break;
            }
            request.chunks.push(length);
            let mut chunk = vec![0u8; length];
            if conn.read_exact(&mut chunk).is_err() {
                break;
            }
            request.content.extend_from_slice(&chunk);
        }
        request
    }

    /// A clamd that reads the whole request, then answers `reply`.
    fn fake_clamd(unix: bool, reply: &'static [u8]) -> (ScannerAddress, JoinHandle<Request>) {
        listen(unix, move |conn| {
            let request = read_request(conn, usize::MAX);
            let _ = conn.write_all(reply);
            conn.shut_write();
            request
        })
    }

    fn scan_inline(address: ScannerAddress, bytes: &'static [u8]) -> Result<Verdict, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        testing::run(move || {
            Box::pin(async move {
                let env = inline(bytes);
                let message = Message { env: &env, stored: &StoredBody::default() };
                let _ = tx.send(scan(&ClamdParams { address }, message).await);
            })
        });
        rx.recv().unwrap()
    }

    fn scan_file(address: ScannerAddress, bytes: Vec<u8>) -> Result<Verdict, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        testing::run(move || {
            Box::pin(async move {
                let (env, path) = in_file(&bytes);
                let _ = tx.send(scan(&ClamdParams { address }, Message { env: &env, stored: &path }).await);
            })
        });
        rx.recv().unwrap()
    }

    const MESSAGE: &[u8] = b"Subject: x\r\n\r\nhello\r\n";

    #[test]
    fn clean_mail_is_accepted_with_a_header() {
        let (address, peer) = fake_clamd(false, b"stream: OK\0");
        assert_eq!(
            scan_inline(address, MESSAGE),
            Ok(Verdict::Accept { headers: vec!["X-Virus-Scanned: clamd".into()], score: None })
        );
        let request = peer.join().unwrap();
        assert_eq!(request.command, b"zINSTREAM");
        assert_eq!(request.chunks, [MESSAGE.len()]);
        assert_eq!(request.content, MESSAGE);
        assert!(request.terminated);
    }

    #[test]
    fn a_virus_is_refused_by_name() {
        let (address, _) = fake_clamd(false, b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0");
        assert_eq!(
            scan_inline(address, MESSAGE),
            Ok(Verdict::Reject { reason: "virus Eicar-Test-Signature.UNOFFICIAL found".into(), score: None })
        );
    }

    #[test]
    fn a_body_file_is_framed_in_chunks_and_terminated() {
        let bytes = content(3 * CHUNK_BYTES + 1234);
        let (address, peer) = fake_clamd(false, b"stream: OK\0");
        assert!(matches!(scan_file(address, bytes.clone()), Ok(Verdict::Accept { .. })));
        let request = peer.join().unwrap();
        assert_eq!(request.command, b"zINSTREAM");
        assert_eq!(request.chunks, [CHUNK_BYTES, CHUNK_BYTES, CHUNK_BYTES, 1234]);
        assert!(request.content == bytes, "the content differs");
        assert!(request.terminated);
    }

    #[test]
    fn an_empty_message_is_only_the_terminator() {
        let (address, peer) = fake_clamd(true, b"stream: OK\0");
        assert!(matches!(scan_inline(address, b""), Ok(Verdict::Accept { .. })));
        let request = peer.join().unwrap();
        assert_eq!(
            (request.command.as_slice(), request.chunks.len(), request.terminated),
            (&b"zINSTREAM"[..], 0, true)
        );
    }

    #[test]
    fn errors_and_malformed_replies() {
        let cases: &[(&[u8], &str)] = &[
            (b"INSTREAM size limit exceeded. ERROR\0", "clamd answered \"INSTREAM size limit exceeded. ERROR\""),
            (b"stream: Can't allocate memory ERROR\0", "Can't allocate memory ERROR"),
            (b"UNKNOWN COMMAND\0", "unexpected reply \"UNKNOWN COMMAND\""),
            (b"", "connection closed without a reply"),
            (b"stream: O", "connection closed within the reply \"stream: O\""),
            (b"stream:  FOUND\0", "unexpected reply"),
            (b"stream: \xff FOUND\0", "unexpected reply \"stream: \\\\xff FOUND\""),
            (b"PONG\0", "unexpected reply"),
        ];
        for (reply, wanted) in cases {
            let (address, _) = fake_clamd(false, reply);
            let error = scan_inline(address.clone(), MESSAGE).unwrap_err();
            assert!(error.contains(wanted), "{:?}: {error}", String::from_utf8_lossy(reply));
            assert!(error.starts_with(&format!("clamd {address}: ")), "{error}");
        }
    }

    #[test]
    fn a_reply_is_read_to_a_bound() {
        let (address, _) = listen(false, |conn| {
            read_request(conn, usize::MAX);
            let _ = conn.write_all(&vec![b'a'; MAX_REPLY_BYTES + 1]);
        });
        let error = scan_inline(address, MESSAGE).unwrap_err();
        assert!(error.contains(&format!("reply longer than {MAX_REPLY_BYTES} bytes")), "{error}");
    }

    #[test]
    fn an_answer_before_the_end_of_the_stream_is_read() {
        // A size limit: clamd answers after the first chunk and closes
        // while much more is still to come.
        let (address, peer) = listen(false, |conn| {
            let request = read_request(conn, 1);
            let _ = conn.write_all(b"INSTREAM size limit exceeded. ERROR\0");
            request
        });
        let error = scan_file(address, content(64 * CHUNK_BYTES)).unwrap_err();
        assert!(error.contains("INSTREAM size limit exceeded. ERROR"), "{error}");
        assert_eq!(peer.join().unwrap().chunks, [CHUNK_BYTES]);
    }

    #[test]
    fn a_close_before_the_end_of_the_stream_is_an_error() {
        let (address, _) = listen(false, |conn| {
            read_request(conn, 1);
        });
        let error = scan_file(address, content(64 * CHUNK_BYTES)).unwrap_err();
        assert!(error.contains("write: ") || error.contains("closed without a reply"), "{error}");
    }

    #[test]
    fn unreachable_clamd_is_an_error() {
        let path = testing::tempdir("clamd-absent").join("clamd.ctl");
        let error = scan_inline(ScannerAddress::Unix(path.clone()), MESSAGE).unwrap_err();
        assert!(error.starts_with(&format!("clamd unix:{}: connect: ", path.display())), "{error}");
    }
}
