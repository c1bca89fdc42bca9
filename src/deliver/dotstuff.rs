//! Dot-stuffing (RFC 5321 §4.5.2): turns stored message content into the
//! wire form that follows DATA, one chunk at a time, and supplies the
//! terminating `<CRLF>.<CRLF>`.
//!
//! Place in the pipeline: between the queue file and the socket of the
//! outbound SMTP transport; the `smtp::client` machine says when to start
//! (`SendBody`) and the driver pushes the content through a `DotStuffer`.
//! Binary content (BODY=BINARYMIME) never comes here: it travels in BDAT
//! chunks exactly as stored (`SendChunk`).
//!
//! Stored content has CRLF line endings. A bare LF is still sent as CRLF,
//! so every line the next hop sees ends in CRLF and a line starting with
//! "." is always stuffed: no `<LF>.<CRLF>` variant can end the message early
//! at a lenient next hop (SMTP smuggling, RFC 5321 §2.3.8). A bare CR does
//! not end a line and is passed through unchanged.
//!
//! Bounds: the encoder keeps two flags of state; `encode` appends at most
//! twice the input length to the output.

/// Streaming dot-stuffing encoder. Chunk boundaries may fall anywhere,
/// even between the CR and LF of one line end.
#[derive(Clone, Debug)]
pub struct DotStuffer {
    /// The next byte starts a line.
    line_start: bool,
    /// A CR was seen and not yet written: whether it ends a line depends
    /// on the next byte.
    cr_pending: bool,
}

impl Default for DotStuffer {
    fn default() -> DotStuffer {
        DotStuffer::new()
    }
}

impl DotStuffer {
    pub fn new() -> DotStuffer {
        DotStuffer {
            line_start: true,
            cr_pending: false,
        }
    }

    /// Appends the wire form of `input` to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 2);
        let mut rest = input;
        while let Some((&b, tail)) = rest.split_first() {
            if self.cr_pending {
                self.cr_pending = false;
                if b == b'\n' {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                    rest = tail;
                    continue;
                }
                out.push(b'\r');
                self.line_start = false;
            }
            match b {
                b'\r' => {
                    self.cr_pending = true;
                    rest = tail;
                }
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                    rest = tail;
                }
                b'.' if self.line_start => {
                    out.extend_from_slice(b"..");
                    self.line_start = false;
                    rest = tail;
                }
                _ => {
                    // Copy the run of ordinary bytes in one go.
                    let run = memchr::memchr2(b'\r', b'\n', tail).map_or(rest.len(), |i| i + 1);
                    out.extend_from_slice(&rest[..run]);
                    self.line_start = false;
                    rest = &rest[run..];
                }
            }
        }
    }

    /// Appends the end of the content: a CRLF if the content did not end
    /// with one, then `.<CRLF>`. The encoder is ready for a new message
    /// afterwards.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.cr_pending {
            // A trailing bare CR: keep it, then end the line properly.
            out.push(b'\r');
            self.line_start = false;
        }
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = DotStuffer::new();
    }
}

/// The whole wire form of `content`, terminator included.
pub fn stuff_all(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 32 + 5);
    let mut stuffer = DotStuffer::new();
    stuffer.encode(content, &mut out);
    stuffer.finish(&mut out);
    out
}

/// Appends `input` to `out` with every bare LF turned into CRLF; existing
/// CRLF pairs and bare CRs are kept. `cr_last` carries whether the previous
/// chunk ended in CR, so chunk boundaries may fall anywhere.
pub fn lf_to_crlf(input: &[u8], cr_last: &mut bool, out: &mut Vec<u8>) {
    out.reserve(input.len() + input.len() / 32);
    for &b in input {
        if b == b'\n' && !*cr_last {
            out.push(b'\r');
        }
        out.push(b);
        *cr_last = b == b'\r';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-at-a-time reference: the meaning of dot-stuffing spelled out.
    fn reference(content: &[u8]) -> Vec<u8> {
        let mut normalized = Vec::new();
        let mut cr_last = false;
        lf_to_crlf(content, &mut cr_last, &mut normalized);
        let mut out = Vec::new();
        let mut line_start = true;
        let mut i = 0;
        while i < normalized.len() {
            let b = normalized[i];
            if b == b'.' && line_start {
                out.push(b'.');
            }
            out.push(b);
            line_start = b == b'\n' && i > 0 && normalized[i - 1] == b'\r';
            i += 1;
        }
        if !out.ends_with(b"\r\n") && !out.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    fn encode_split(content: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut stuffer = DotStuffer::new();
        let mut out = Vec::new();
        let mut start = 0;
        for &s in splits {
            stuffer.encode(&content[start..s], &mut out);
            start = s;
        }
        stuffer.encode(&content[start..], &mut out);
        stuffer.finish(&mut out);
        out
    }

    #[test]
    fn examples() {
        assert_eq!(stuff_all(b""), b".\r\n");
        assert_eq!(stuff_all(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(stuff_all(b"a"), b"a\r\n.\r\n");
        assert_eq!(stuff_all(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(
            stuff_all(b"a\r\n.b\r\n..c\r\nd.e\r\n"),
            b"a\r\n..b\r\n...c\r\nd.e\r\n.\r\n"
        );
        assert_eq!(stuff_all(b"x\r\n."), b"x\r\n..\r\n.\r\n");
        assert_eq!(stuff_all(b"\r\n\r\n.\r\n"), b"\r\n\r\n..\r\n.\r\n");
    }

    #[test]
    fn bare_lf_becomes_crlf_and_stuffs_the_next_line() {
        assert_eq!(stuff_all(b"a\n.\r\nb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(stuff_all(b"a\n.\n"), b"a\r\n..\r\n.\r\n");
    }

    #[test]
    fn bare_cr_passes_and_does_not_start_a_line() {
        assert_eq!(stuff_all(b"a\r.b\r\n"), b"a\r.b\r\n.\r\n");
        assert_eq!(stuff_all(b"a\r"), b"a\r\r\n.\r\n");
        assert_eq!(stuff_all(b"\r\r\n"), b"\r\r\n.\r\n");
    }

    #[test]
    fn every_split_of_tricky_content() {
        let content: &[u8] = b".a\r\n..\r\n\r\n.\r\nx.y\r.z\n.w\r\n\r\r\n.";
        let whole = stuff_all(content);
        assert_eq!(whole, reference(content));
        for i in 0..=content.len() {
            assert_eq!(encode_split(content, &[i]), whole, "split at {i}");
            for j in i..=content.len() {
                assert_eq!(encode_split(content, &[i, j]), whole, "split at {i},{j}");
            }
        }
        let every: Vec<usize> = (1..content.len()).collect();
        assert_eq!(encode_split(content, &every), whole);
    }

    #[test]
    fn random_content_matches_reference() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b".\r\nab";
        for _ in 0..2000 {
            let len = (next() % 24) as usize;
            let content: Vec<u8> = (0..len).map(|_| alphabet[(next() % 5) as usize]).collect();
            let expected = reference(&content);
            let split = if len == 0 {
                0
            } else {
                (next() % len as u64) as usize
            };
            assert_eq!(encode_split(&content, &[split]), expected, "{content:?}");
        }
    }

    #[test]
    fn the_wire_form_never_ends_early() {
        // Whatever the content, the only CRLF.CRLF is the terminator.
        let content: &[u8] = b"a\r\n.\r\n.\n\n.\r\r\n.\r\n";
        let wire = stuff_all(content);
        let ends: Vec<usize> = wire
            .windows(5)
            .enumerate()
            .filter(|(_, w)| w == b"\r\n.\r\n")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(ends, vec![wire.len() - 5]);
    }

    #[test]
    fn finish_resets_for_the_next_message() {
        let mut stuffer = DotStuffer::new();
        let mut out = Vec::new();
        stuffer.encode(b"abc", &mut out);
        stuffer.finish(&mut out);
        out.clear();
        stuffer.encode(b".x\r\n", &mut out);
        stuffer.finish(&mut out);
        assert_eq!(out, b"..x\r\n.\r\n");
    }

    #[test]
    fn lf_to_crlf_across_chunks() {
        let mut out = Vec::new();
        let mut cr_last = false;
        lf_to_crlf(b"a\r", &mut cr_last, &mut out);
        lf_to_crlf(b"\nb\n\r", &mut cr_last, &mut out);
        lf_to_crlf(b"c", &mut cr_last, &mut out);
        assert_eq!(out, b"a\r\nb\r\n\rc");
    }
}
