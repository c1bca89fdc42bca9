//! The message as the Sieve tests see it: header fields split from the raw
//! header block, unfolded and with RFC 2047 encoded-words decoded, and
//! RFC 5322 address lists parsed robustly (display names, groups, comments,
//! quoted local parts, route addresses).
//!
//! Nothing here fails: malformed input yields what can be recovered.

/// One header field: its name as written and its raw value (unfolded, not
/// decoded).
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub raw: String,
}

/// Splits a header block into fields. Stops at the first empty line; lines
/// that are neither a field nor a continuation are skipped.
pub fn parse_header(block: &[u8]) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    let mut cont_ok = false;
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if cont_ok {
                if let Some(f) = out.last_mut() {
                    f.raw.push_str(&String::from_utf8_lossy(line));
                }
            }
            continue;
        }
        match line.iter().position(|&b| b == b':') {
            Some(colon) if colon > 0 => {
                let name = String::from_utf8_lossy(&line[..colon]).trim_end().to_string();
                let raw = String::from_utf8_lossy(&line[colon + 1..]).into_owned();
                out.push(Field { name, raw });
                cont_ok = true;
            }
            _ => cont_ok = false,
        }
    }
    out
}

/// Header value for the `header` test: unfolded, trimmed, encoded-words decoded.
pub fn decoded_value(raw: &str) -> String {
    decode_words(raw.trim_matches(|c| c == ' ' || c == '\t' || c == '\r' || c == '\n'))
}

fn hexval(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn b64val(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

fn base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for b in s.bytes() {
        if b == b'=' {
            break;
        }
        let v = b64val(b)?;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    Some(out)
}

fn qdecode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => out.push(b' '),
            b'=' => {
                let h = hexval(*b.get(i + 1)?)?;
                let l = hexval(*b.get(i + 2)?)?;
                out.push(h << 4 | l);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

fn charset_decode(charset: &str, bytes: &[u8]) -> Option<String> {
    let cs = charset.split('*').next().unwrap_or("").to_ascii_lowercase();
    match cs.as_str() {
        "utf-8" | "utf8" | "us-ascii" | "ascii" => Some(String::from_utf8_lossy(bytes).into_owned()),
        "iso-8859-1" | "latin1" | "iso8859-1" | "windows-1252" | "cp1252" => {
            Some(bytes.iter().map(|&b| char::from(b)).collect())
        }
        _ => None,
    }
}

/// Decodes one `=?charset?enc?text?=` word, or `None` if it is not one.
fn encoded_word(w: &str) -> Option<String> {
    let inner = w.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut parts = inner.splitn(3, '?');
    let charset = parts.next()?;
    let enc = parts.next()?;
    let text = parts.next()?;
    if text.contains('?') && !enc.eq_ignore_ascii_case("q") {
        return None;
    }
    let bytes = match enc {
        "b" | "B" => base64(text)?,
        "q" | "Q" => qdecode(text)?,
        _ => return None,
    };
    charset_decode(charset, &bytes)
}

/// Decodes RFC 2047 encoded-words in an unstructured value; whitespace
/// between two adjacent encoded-words is dropped.
pub fn decode_words(s: &str) -> String {
    if !s.contains("=?") {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut pending_ws = String::new();
    let mut last_encoded = false;
    let mut rest = s;
    while !rest.is_empty() {
        let ws_len = rest.find(|c: char| c != ' ' && c != '\t').unwrap_or(rest.len());
        if ws_len > 0 {
            pending_ws.push_str(&rest[..ws_len]);
            rest = &rest[ws_len..];
            continue;
        }
        let word_len = rest.find([' ', '\t']).unwrap_or(rest.len());
        let word = &rest[..word_len];
        rest = &rest[word_len..];
        match encoded_word(word) {
            Some(d) => {
                if !last_encoded {
                    out.push_str(&pending_ws);
                }
                out.push_str(&d);
                last_encoded = true;
            }
            None => {
                out.push_str(&pending_ws);
                out.push_str(word);
                last_encoded = false;
            }
        }
        pending_ws.clear();
    }
    out.push_str(&pending_ws);
    out
}

/// One address from an address list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// `local@domain` as written (without display name and comments).
    pub all: String,
    /// Local part and domain, when the address has both.
    pub parts: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
enum T {
    Word(String),
    Special(char),
}

fn tokens(s: &str) -> Vec<T> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            ' ' | '\t' | '\r' | '\n' => i += 1,
            '(' => {
                let mut depth = 0usize;
                while i < c.len() {
                    match c[i] {
                        '\\' => i += 1,
                        '(' => depth += 1,
                        ')' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            '"' => {
                let mut w = String::new();
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' && i + 1 < c.len() {
                        i += 1;
                    }
                    w.push(c[i]);
                    i += 1;
                }
                i += 1;
                out.push(T::Word(w));
            }
            '[' => {
                let mut w = String::from("[");
                i += 1;
                while i < c.len() && c[i] != ']' {
                    w.push(c[i]);
                    i += 1;
                }
                w.push(']');
                i += 1;
                out.push(T::Word(w));
            }
            ch @ ('<' | '>' | ',' | ':' | ';' | '@' | '.') => {
                out.push(T::Special(ch));
                i += 1;
            }
            _ => {
                let mut w = String::new();
                while i < c.len() && !"()<>,:;@.\"[ \t\r\n".contains(c[i]) {
                    w.push(c[i]);
                    i += 1;
                }
                if w.is_empty() {
                    i += 1;
                } else {
                    out.push(T::Word(w));
                }
            }
        }
    }
    out
}

/// Whether a local part can stand unquoted (RFC 5322 dot-atom).
fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii())
}

fn addr_from(tokens: &[T]) -> Option<Address> {
    // Drop a source route ("@a,@b:") in front of the address.
    let start = tokens.iter().rposition(|t| *t == T::Special(':')).map_or(0, |p| p + 1);
    let tokens = &tokens[start..];
    let mut text = String::new();
    for t in tokens {
        match t {
            T::Word(w) => text.push_str(w),
            T::Special(c) => text.push(*c),
        }
    }
    if text.is_empty() {
        return None;
    }
    match tokens.iter().rposition(|t| *t == T::Special('@')) {
        Some(at) if at > 0 && at + 1 < tokens.len() => {
            let (local, domain) = text.rsplit_once('@')?;
            let all = if is_dot_atom(local) {
                format!("{local}@{domain}")
            } else {
                format!("\"{}\"@{domain}", local.replace('\\', "\\\\").replace('"', "\\\""))
            };
            Some(Address { all, parts: Some((local.to_string(), domain.to_string())) })
        }
        _ => Some(Address { all: text, parts: None }),
    }
}

/// Parses an address list (From, To, Cc, …). Group names, display names
/// and items that are not addresses are dropped. A value holding no
/// address at all (empty, only an empty group, or only words) is one
/// invalid address: the trimmed value, which only `:all` sees (as
/// Pigeonhole does). `all` quotes a local part that is not a dot-atom.
pub fn parse_addresses(raw: &str) -> Vec<Address> {
    let out: Vec<Address> = parse_address_list(raw).into_iter().filter(|a| a.parts.is_some()).collect();
    if out.is_empty() {
        let all = raw.trim_matches(|c| c == ' ' || c == '\t' || c == '\r' || c == '\n').to_string();
        return vec![Address { all, parts: None }];
    }
    out
}

fn parse_address_list(raw: &str) -> Vec<Address> {
    let toks = tokens(raw);
    let mut out = Vec::new();
    let mut cur: Vec<T> = Vec::new();
    let mut angle: Option<Vec<T>> = None;
    let mut in_angle = false;
    let flush = |cur: &mut Vec<T>, angle: &mut Option<Vec<T>>, out: &mut Vec<Address>| {
        let a = match angle.take() {
            Some(a) => addr_from(&a),
            None => addr_from(cur),
        };
        out.extend(a);
        cur.clear();
    };
    for t in toks {
        if in_angle {
            match t {
                T::Special('>') => in_angle = false,
                t => angle.get_or_insert_with(Vec::new).push(t),
            }
            continue;
        }
        match t {
            T::Special('<') => {
                in_angle = true;
                angle = Some(Vec::new());
            }
            T::Special(',') | T::Special(';') => flush(&mut cur, &mut angle, &mut out),
            // A group's display name ends with ':' (outside any angle).
            T::Special(':') if angle.is_none() && !cur.contains(&T::Special('@')) => cur.clear(),
            t => {
                if angle.is_none() {
                    cur.push(t);
                }
            }
        }
    }
    flush(&mut cur, &mut angle, &mut out);
    out
}
