//! Local delivery into a Maildir (the `tmp/` → `new/` protocol of
//! D. J. Bernstein's maildir(5)): writes one message to a file of its own,
//! makes it durable, then publishes it with a link into `new/`, so a reader
//! never sees a partial message and a crash leaves at most a stray file in
//! `tmp/`.
//!
//! Place in the pipeline: a transport of the delivery engine for recipients
//! in local domains. It blocks (open, write, fsync), so it runs on the
//! blocking worker pool, never on a shard's executor.
//!
//! Stored content has CRLF line endings; Maildir files use LF, so each CRLF
//! becomes LF on the way (a lone CR stays). That convention is for text: a
//! message received with BODY=BINARYMIME (RFC 3030) is stored byte for
//! byte as received, its added `Return-Path:` line ending in CRLF like the
//! rest of its header section ([`LineEnds::AsStored`]), since turning a
//! CRLF in binary content into LF would change the content. The copy goes through a fixed
//! buffer of `COPY_BUFFER_BYTES`; the message size is not bounded here (the
//! queue already bounds it).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes read from the content at a time.
const COPY_BUFFER_BYTES: usize = 64 * 1024;
/// Fresh names tried when a file of the same name already exists in tmp/.
const NAME_ATTEMPT_COUNT_MAX: u32 = 8;
/// Longest user name accepted by `expand_template` (NAME_MAX).
pub const USER_BYTES_MAX: usize = 255;

/// How line ends are written to the mailbox file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineEnds {
    /// Each CRLF becomes LF (the Maildir convention for text).
    Lf,
    /// Byte for byte as stored (binary content).
    AsStored,
}

/// Per-process counter for unique names (the `Q` part).
static DELIVERY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Why a user name cannot become part of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("empty user name")]
    Empty,
    #[error("user name longer than {USER_BYTES_MAX} bytes")]
    TooLong,
    #[error("user name contains '/'")]
    Slash,
    #[error("user name starts with '.'")]
    LeadingDot,
    #[error("user name contains a control character or NUL")]
    Control,
}

/// The Maildir path for `user`: `template` with every `{user}` replaced by
/// the lower-cased user name. The name is refused if it could leave its
/// directory or hide in it: no '/', no leading '.', no NUL or other control
/// character, not empty, at most `USER_BYTES_MAX` bytes.
pub fn expand_template(template: &str, user: &str) -> Result<PathBuf, TemplateError> {
    if user.is_empty() {
        return Err(TemplateError::Empty);
    }
    if user.len() > USER_BYTES_MAX {
        return Err(TemplateError::TooLong);
    }
    if user.contains('/') {
        return Err(TemplateError::Slash);
    }
    if user.starts_with('.') {
        return Err(TemplateError::LeadingDot);
    }
    if user.chars().any(char::is_control) {
        return Err(TemplateError::Control);
    }
    Ok(PathBuf::from(
        template.replace("{user}", &user.to_lowercase()),
    ))
}

/// Delivers one message into `maildir` (created with cur/, new/ and tmp/,
/// mode 0700, if missing): `prefix` (e.g. a Return-Path header, may be
/// empty) then `content`, both with CRLF turned into LF. Returns the path
/// of the file in new/. On error, nothing is left in tmp/ or new/.
pub fn deliver(
    maildir: &Path,
    hostname: &str,
    prefix: &[u8],
    content: &mut dyn Read,
    line_ends: LineEnds,
) -> io::Result<PathBuf> {
    create_maildir(maildir)?;
    let fresh_name = || {
        unique_name(
            SystemTime::now(),
            std::process::id(),
            next_counter(),
            hostname,
        )
    };
    let (name, file) = create_unique(&maildir.join("tmp"), fresh_name)?;
    let tmp_path = maildir.join("tmp").join(&name);
    let result = write_and_publish(
        file,
        &tmp_path,
        &maildir.join("new"),
        &name,
        prefix,
        content,
        line_ends,
    );
    // The tmp/ name goes in every case: after success the file lives on
    // under new/, after failure it is garbage.
    let _ = std::fs::remove_file(&tmp_path);
    result
}

fn write_and_publish(
    file: File,
    tmp_path: &Path,
    new_dir: &Path,
    name: &str,
    prefix: &[u8],
    content: &mut dyn Read,
    line_ends: LineEnds,
) -> io::Result<PathBuf> {
    let mut writer = io::BufWriter::with_capacity(COPY_BUFFER_BYTES, file);
    let mut converter = CrlfToLf::default();
    let mut copy = |bytes: &[u8], writer: &mut io::BufWriter<File>| match line_ends {
        LineEnds::Lf => converter.write(bytes, writer),
        LineEnds::AsStored => writer.write_all(bytes),
    };
    copy(prefix, &mut writer)?;
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        let n = match content.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        copy(&buf[..n], &mut writer)?;
    }
    if line_ends == LineEnds::Lf {
        converter.finish(&mut writer)?;
    }
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    let new_path = new_dir.join(name);
    // A link never replaces an existing file.
    std::fs::hard_link(tmp_path, &new_path)?;
    if let Err(e) = File::open(new_dir).and_then(|d| d.sync_all()) {
        let _ = std::fs::remove_file(&new_path);
        return Err(e);
    }
    Ok(new_path)
}

/// Creates `maildir` and its three subdirectories (mode 0700) if missing.
pub fn create_maildir(maildir: &Path) -> io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true).mode(0o700);
    for sub in ["cur", "new", "tmp"] {
        builder.create(maildir.join(sub))?;
    }
    Ok(())
}

/// Longest folder name `folder_path` accepts, in bytes (before encoding).
pub const FOLDER_BYTES_MAX: usize = 255;

/// Why a folder name cannot become a Maildir++ folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FolderError {
    #[error("folder name longer than {FOLDER_BYTES_MAX} bytes")]
    TooLong,
    #[error("folder name has an empty, \".\" or \"..\" level")]
    BadLevel,
    #[error("folder name contains a control character or NUL")]
    Control,
}

/// The Maildir++ folder directory for a Sieve `fileinto` folder name, as
/// Dovecot lays it out: `INBOX` (any case) is the mailbox itself (`None`);
/// otherwise `.` and the name's levels (split at `/` or `.`, an `INBOX`
/// prefix dropped) joined with `.`, non-ASCII and `&` in IMAP's modified
/// UTF-7 (RFC 3501 §5.1.3): `Lists/rust` → `.Lists.rust`.
pub fn folder_dir(folder: &str) -> Result<Option<String>, FolderError> {
    if folder.len() > FOLDER_BYTES_MAX {
        return Err(FolderError::TooLong);
    }
    if folder.chars().any(char::is_control) {
        return Err(FolderError::Control);
    }
    let mut levels: Vec<&str> = folder.split(['/', '.']).collect();
    if levels.first().is_some_and(|l| l.eq_ignore_ascii_case("INBOX")) {
        levels.remove(0);
        if levels.is_empty() {
            return Ok(None);
        }
    }
    if levels.iter().any(|l| l.is_empty() || *l == "..") {
        return Err(FolderError::BadLevel);
    }
    let encoded: Vec<String> = levels.iter().map(|l| modified_utf7(l)).collect();
    Ok(Some(format!(".{}", encoded.join("."))))
}

/// IMAP's modified UTF-7: printable ASCII as itself (`&` as `&-`), other
/// runs as `&` + modified base64 of their UTF-16BE + `-`.
fn modified_utf7(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    let mut out = String::new();
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        for chunk in bytes.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out.push('-');
        pending.clear();
    };
    for c in text.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            match c {
                '&' => out.push_str("&-"),
                c => out.push(c),
            }
        } else {
            pending.extend(c.encode_utf16(&mut [0; 2]).iter());
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Creates a Maildir++ folder (cur/, new/, tmp/ and the `maildirfolder`
/// marker Dovecot and Courier look for) if it is missing.
pub fn create_folder(folder: &Path) -> io::Result<()> {
    create_maildir(folder)?;
    let marker = folder.join("maildirfolder");
    if !marker.exists() {
        OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(marker)?;
    }
    Ok(())
}

/// Opens a new file in `tmp_dir` under a fresh unique name; never opens an
/// existing one.
fn create_unique(
    tmp_dir: &Path,
    mut fresh_name: impl FnMut() -> String,
) -> io::Result<(String, File)> {
    let mut last_error = None;
    for _ in 0..NAME_ATTEMPT_COUNT_MAX {
        let name = fresh_name();
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp_dir.join(&name));
        match opened {
            Ok(file) => return Ok((name, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no unique name found")))
}

fn next_counter() -> u64 {
    DELIVERY_COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `<secs>.M<usecs>P<pid>Q<counter>.<host>`, with '/' and ':' in the host
/// name written as `\057` and `\072` (maildir(5)).
pub fn unique_name(now: SystemTime, pid: u32, counter: u64, hostname: &str) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut host = String::with_capacity(hostname.len());
    for c in hostname.chars() {
        match c {
            '/' => host.push_str("\\057"),
            ':' => host.push_str("\\072"),
            c if c.is_control() => {}
            c => host.push(c),
        }
    }
    if host.is_empty() {
        host.push_str("localhost");
    }
    format!(
        "{}.M{}P{}Q{}.{}",
        since.as_secs(),
        since.subsec_micros(),
        pid,
        counter,
        host
    )
}

/// Streaming CRLF → LF: holds back a CR until the next byte shows whether
/// it ends a line.
#[derive(Debug, Default)]
struct CrlfToLf {
    cr_pending: bool,
}

impl CrlfToLf {
    fn write(&mut self, input: &[u8], out: &mut impl Write) -> io::Result<()> {
        let mut rest = input;
        if self.cr_pending && !rest.is_empty() {
            self.cr_pending = false;
            if rest[0] != b'\n' {
                out.write_all(b"\r")?;
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\r') {
                None => {
                    out.write_all(rest)?;
                    break;
                }
                Some(i) => {
                    out.write_all(&rest[..i])?;
                    match rest.get(i + 1) {
                        // CRLF: drop the CR, the LF goes out with the next run.
                        Some(b'\n') => {}
                        Some(_) => out.write_all(b"\r")?,
                        None => self.cr_pending = true,
                    }
                    rest = &rest[i + 1..];
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if std::mem::take(&mut self.cr_pending) {
            out.write_all(b"\r")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "ringpost-maildir-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn convert(chunks: &[&[u8]]) -> Vec<u8> {
        let mut c = CrlfToLf::default();
        let mut out = Vec::new();
        for chunk in chunks {
            c.write(chunk, &mut out).unwrap();
        }
        c.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn binary_content_is_stored_byte_for_byte() {
        let dir = TempDir::new("binary");
        let maildir = dir.0.join("Maildir");
        let body: &[u8] = b"Content-Type: application/octet-stream\r\n\r\n\x00\r\n.\r\nbare\n\rcr\r\xff";
        let mut content = body;
        let path = deliver(&maildir, "mx1.example.org", b"Return-Path: <a@x>\r\n", &mut content, LineEnds::AsStored)
            .unwrap();
        let mut expected = b"Return-Path: <a@x>\r\n".to_vec();
        expected.extend_from_slice(body);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn delivers_into_new_with_lf_endings() {
        let dir = TempDir::new("basic");
        let maildir = dir.0.join("Maildir");
        let mut content: &[u8] = b"Subject: hi\r\n\r\nline one\r\nbare\rcr\r\n";
        let path = deliver(
            &maildir,
            "mx1.example.org",
            b"Return-Path: <a@x>\r\n",
            &mut content,
            LineEnds::Lf,
        )
        .unwrap();
        assert_eq!(path.parent().unwrap(), maildir.join("new"));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"Return-Path: <a@x>\nSubject: hi\n\nline one\nbare\rcr\n"
        );
        assert!(entries(&maildir.join("tmp")).is_empty());
        assert!(entries(&maildir.join("cur")).is_empty());
        for sub in ["", "cur", "new", "tmp"] {
            let mode = std::fs::metadata(maildir.join(sub))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{sub}");
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "message readable by its owner only");
    }

    #[test]
    fn many_deliveries_get_distinct_names() {
        let dir = TempDir::new("many");
        let mut paths = std::collections::HashSet::new();
        for i in 0..50 {
            let text = format!("n: {i}\r\n");
            let path = deliver(&dir.0, "host", b"", &mut text.as_bytes(), LineEnds::Lf).unwrap();
            assert!(paths.insert(path));
        }
        assert_eq!(entries(&dir.0.join("new")).len(), 50);
    }

    #[test]
    fn concurrent_deliveries_from_threads() {
        let dir = TempDir::new("threads");
        let root = dir.0.clone();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let root = root.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let text = format!("t{t} n{i}\r\n");
                        deliver(&root, "host", b"", &mut text.as_bytes(), LineEnds::Lf).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(entries(&root.join("new")).len(), 40);
    }

    #[test]
    fn read_error_leaves_nothing_behind() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                self.0 -= 1;
                buf[..4].copy_from_slice(b"abc\n");
                Ok(4)
            }
        }
        let dir = TempDir::new("fail");
        let err = deliver(&dir.0, "host", b"X: y\r\n", &mut Failing(3), LineEnds::Lf).unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert!(entries(&dir.0.join("tmp")).is_empty());
        assert!(entries(&dir.0.join("new")).is_empty());
    }

    #[test]
    fn unwritable_maildir_is_an_error() {
        let dir = TempDir::new("file");
        let not_a_dir = dir.0.join("plain-file");
        std::fs::write(&not_a_dir, b"x").unwrap();
        assert!(deliver(&not_a_dir, "host", b"", &mut &b"x"[..], LineEnds::Lf).is_err());
    }

    #[test]
    fn existing_names_are_never_overwritten() {
        let dir = TempDir::new("exists");
        create_maildir(&dir.0).unwrap();
        let tmp = dir.0.join("tmp");
        for name in ["n0", "n1"] {
            std::fs::write(tmp.join(name), b"keep").unwrap();
        }
        let mut counter = 0;
        let mut names = || {
            counter += 1;
            format!("n{}", counter - 1)
        };
        let (name, file) = create_unique(&tmp, &mut names).unwrap();
        assert_eq!(name, "n2");
        assert_eq!(std::fs::read(tmp.join("n0")).unwrap(), b"keep");
        // Every name taken: an error, not an overwrite.
        let err = create_unique(&tmp, || "n0".to_string()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(tmp.join("n0")).unwrap(), b"keep");
        // A name already published in new/ is not replaced either.
        std::fs::write(dir.0.join("new").join("n2"), b"old").unwrap();
        let err = write_and_publish(
            file,
            &tmp.join("n2"),
            &dir.0.join("new"),
            "n2",
            b"",
            &mut &b"x"[..],
            LineEnds::Lf,
        );
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(dir.0.join("new").join("n2")).unwrap(), b"old");
    }

    #[test]
    fn unique_name_format() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(
            unique_name(t, 42, 7, "mx1.example.org"),
            "1700000000.M123456P42Q7.mx1.example.org"
        );
        assert_eq!(
            unique_name(t, 42, 7, "a/b:c"),
            "1700000000.M123456P42Q7.a\\057b\\072c"
        );
        assert_eq!(unique_name(t, 1, 0, ""), "1700000000.M123456P1Q0.localhost");
    }

    #[test]
    fn crlf_to_lf_across_every_split() {
        let content: &[u8] = b"a\r\nb\rc\r\r\n\r\nd\r";
        let expected: &[u8] = b"a\nb\rc\r\n\nd\r";
        assert_eq!(convert(&[content]), expected);
        for i in 0..=content.len() {
            for j in i..=content.len() {
                assert_eq!(
                    convert(&[&content[..i], &content[i..j], &content[j..]]),
                    expected,
                    "{i},{j}"
                );
            }
        }
        assert_eq!(convert(&[b"\r", b"", b"\n"]), b"\n");
    }

    #[test]
    fn template_expansion() {
        let t = "/var/mail/{user}/Maildir";
        assert_eq!(
            expand_template(t, "Alice"),
            Ok(PathBuf::from("/var/mail/alice/Maildir"))
        );
        assert_eq!(
            expand_template(t, "bob.smith"),
            Ok(PathBuf::from("/var/mail/bob.smith/Maildir"))
        );
        assert_eq!(
            expand_template(t, "JÖRG"),
            Ok(PathBuf::from("/var/mail/jörg/Maildir"))
        );
        assert_eq!(
            expand_template("/srv/{user}/{user}", "x"),
            Ok(PathBuf::from("/srv/x/x"))
        );
        assert_eq!(expand_template(t, ""), Err(TemplateError::Empty));
        assert_eq!(expand_template(t, "a/b"), Err(TemplateError::Slash));
        assert_eq!(expand_template(t, "../etc"), Err(TemplateError::Slash));
        assert_eq!(expand_template(t, ".."), Err(TemplateError::LeadingDot));
        assert_eq!(
            expand_template(t, ".hidden"),
            Err(TemplateError::LeadingDot)
        );
        assert_eq!(expand_template(t, "a\0b"), Err(TemplateError::Control));
        assert_eq!(expand_template(t, "a\nb"), Err(TemplateError::Control));
        assert_eq!(
            expand_template(t, &"a".repeat(USER_BYTES_MAX + 1)),
            Err(TemplateError::TooLong)
        );
        assert!(expand_template(t, &"a".repeat(USER_BYTES_MAX)).is_ok());
    }

    #[test]
    fn fileinto_folders_are_maildirplusplus_folders() {
        assert_eq!(folder_dir("INBOX"), Ok(None));
        assert_eq!(folder_dir("inbox"), Ok(None));
        assert_eq!(folder_dir("Lists/rust"), Ok(Some(".Lists.rust".to_string())));
        assert_eq!(folder_dir("INBOX.Spam"), Ok(Some(".Spam".to_string())));
        assert_eq!(folder_dir("Tom & Jerry"), Ok(Some(".Tom &- Jerry".to_string())));
        // RFC 3501 §5.1.3's example: "~peter/mail/台北/日本語".
        assert_eq!(folder_dir("台北/日本語"), Ok(Some(".&U,BTFw-.&ZeVnLIqe-".to_string())));
        assert_eq!(folder_dir("a/../b"), Err(FolderError::BadLevel));
        assert_eq!(folder_dir("a//b"), Err(FolderError::BadLevel));
        assert_eq!(folder_dir("/etc"), Err(FolderError::BadLevel));
        assert_eq!(folder_dir("x\ny"), Err(FolderError::Control));
        assert_eq!(folder_dir(&"x".repeat(256)), Err(FolderError::TooLong));
    }
}
