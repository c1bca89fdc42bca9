//! Sieve lexer (RFC 5228 section 8.1): turns script bytes into tokens with
//! their line and column, for the parser in `parser.rs`.
//!
//! Handles quoted strings with `\"`/`\\` escapes, `text:` multi-line strings
//! with dot-unstuffing, numbers with K/M/G quantifiers, tags, identifiers and
//! both comment forms. Never panics: every malformed input is a
//! [`CompileError`].

use super::CompileError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Ident(String),
    Tag(String),
    Number(u64),
    Str(String),
    LBracket,
    RBracket,
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Semi,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
    pub column: usize,
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
    col: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn peek_at(&self, k: usize) -> Option<u8> {
        self.s.get(self.i + k).copied()
    }
    fn bump(&mut self) -> Option<u8> {
        let c = self.s.get(self.i).copied()?;
        self.i += 1;
        if c == b'\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }
    fn err(&self, line: usize, column: usize, message: impl Into<String>) -> CompileError {
        CompileError { line, column, message: message.into() }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Splits a script into tokens: all of them, or those before the first
/// lexical error and that error (so that the parser can report an earlier
/// syntax error first).
pub fn tokenize_prefix(s: &[u8]) -> (Vec<Token>, Option<CompileError>) {
    let mut out = Vec::new();
    match tokens_into(s, &mut out) {
        Ok(()) => (out, None),
        Err(e) => (out, Some(e)),
    }
}

/// Splits a script into tokens.
#[cfg(test)]
pub fn tokenize(s: &[u8]) -> Result<Vec<Token>, CompileError> {
    match tokenize_prefix(s) {
        (t, None) => Ok(t),
        (_, Some(e)) => Err(e),
    }
}

fn tokens_into(s: &[u8], out: &mut Vec<Token>) -> Result<(), CompileError> {
    let mut lx = Lexer { s, i: 0, line: 1, col: 1 };
    loop {
        // Whitespace and comments.
        match lx.peek() {
            None => return Ok(()),
            Some(b' ' | b'\t' | b'\r' | b'\n') => {
                lx.bump();
                continue;
            }
            Some(b'#') => {
                while let Some(c) = lx.peek() {
                    if c == b'\n' {
                        break;
                    }
                    lx.bump();
                }
                continue;
            }
            Some(b'/') if lx.peek_at(1) == Some(b'*') => {
                let (l, c) = (lx.line, lx.col);
                lx.bump();
                lx.bump();
                loop {
                    match lx.peek() {
                        None => return Err(lx.err(l, c, "unterminated comment")),
                        Some(b'*') if lx.peek_at(1) == Some(b'/') => {
                            lx.bump();
                            lx.bump();
                            break;
                        }
                        Some(_) => {
                            lx.bump();
                        }
                    }
                }
                continue;
            }
            Some(_) => {}
        }
        let (line, column) = (lx.line, lx.col);
        let c = lx.peek().unwrap_or(0);
        let tok = match c {
            b'[' => single(&mut lx, Tok::LBracket),
            b']' => single(&mut lx, Tok::RBracket),
            b'(' => single(&mut lx, Tok::LParen),
            b')' => single(&mut lx, Tok::RParen),
            b'{' => single(&mut lx, Tok::LBrace),
            b'}' => single(&mut lx, Tok::RBrace),
            b',' => single(&mut lx, Tok::Comma),
            b';' => single(&mut lx, Tok::Semi),
            b'"' => {
                lx.bump();
                let mut buf = Vec::new();
                loop {
                    match lx.bump() {
                        None => return Err(lx.err(line, column, "unterminated string")),
                        Some(b'"') => break,
                        Some(b'\\') => match lx.bump() {
                            None => return Err(lx.err(line, column, "unterminated string")),
                            Some(e) => buf.push(e),
                        },
                        Some(b'\r') if lx.peek() == Some(b'\n') => {}
                        Some(b) => buf.push(b),
                    }
                }
                Tok::Str(text(&buf))
            }
            b':' => {
                lx.bump();
                let name = ident(&mut lx);
                if name.is_empty() {
                    return Err(lx.err(line, column, "expected a tag name after ':'"));
                }
                Tok::Tag(name.to_ascii_lowercase())
            }
            b'0'..=b'9' => {
                let mut n: u64 = 0;
                while let Some(d @ b'0'..=b'9') = lx.peek() {
                    lx.bump();
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(d - b'0')))
                        .ok_or_else(|| lx.err(line, column, "number too large"))?;
                }
                let mult: u64 = match lx.peek() {
                    Some(b'k' | b'K') => 1 << 10,
                    Some(b'm' | b'M') => 1 << 20,
                    Some(b'g' | b'G') => 1 << 30,
                    _ => 1,
                };
                if mult > 1 {
                    lx.bump();
                }
                if lx.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
                    return Err(lx.err(line, column, "invalid number"));
                }
                let n = n.checked_mul(mult).ok_or_else(|| lx.err(line, column, "number too large"))?;
                Tok::Number(n)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let name = ident(&mut lx);
                if name.eq_ignore_ascii_case("text") && lx.peek() == Some(b':') {
                    lx.bump();
                    Tok::Str(multiline(&mut lx, line, column)?)
                } else {
                    Tok::Ident(name.to_ascii_lowercase())
                }
            }
            _ => {
                let shown = if c.is_ascii_graphic() { format!("'{}'", c as char) } else { format!("0x{c:02x}") };
                return Err(lx.err(line, column, format!("unexpected character {shown}")));
            }
        };
        out.push(Token { tok, line, column });
    }
}

fn single(lx: &mut Lexer, t: Tok) -> Tok {
    lx.bump();
    t
}

fn ident(lx: &mut Lexer) -> String {
    let start = lx.i;
    if lx.peek().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_') {
        while lx.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
            lx.bump();
        }
    }
    text(&lx.s[start..lx.i])
}

/// After `text:`: optional blanks and a hash comment, a line break, then
/// lines up to one holding a lone `.`. Lines are joined with `\n`.
fn multiline(lx: &mut Lexer, line: usize, column: usize) -> Result<String, CompileError> {
    loop {
        match lx.peek() {
            Some(b' ' | b'\t') => {
                lx.bump();
            }
            Some(b'#') => {
                while lx.peek().is_some_and(|c| c != b'\n') {
                    lx.bump();
                }
            }
            Some(b'\r') if lx.peek_at(1) == Some(b'\n') => {
                lx.bump();
            }
            Some(b'\n') => {
                lx.bump();
                break;
            }
            _ => return Err(lx.err(lx.line, lx.col, "expected a line break after 'text:'")),
        }
    }
    let mut out: Vec<u8> = Vec::new();
    loop {
        let start = lx.i;
        while lx.peek().is_some_and(|c| c != b'\n') {
            lx.bump();
        }
        if lx.peek().is_none() {
            return Err(lx.err(line, column, "unterminated multi-line string"));
        }
        let mut l = &lx.s[start..lx.i];
        lx.bump();
        if l.last() == Some(&b'\r') {
            l = &l[..l.len() - 1];
        }
        if l == b"." {
            break;
        }
        if l.first() == Some(&b'.') && l.get(1) == Some(&b'.') {
            l = &l[1..];
        }
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    Ok(text(&out))
}
