//! Table sources read from files: text maps in the Postfix/sendmail formats
//! (`key value`, aliases(5) `key: value`, continuation lines) held in memory,
//! and cdb files (built by `ringpost makemap`) read through a memory map.
//!
//! Place in the pipeline: opened when the routing engine is built (start-up
//! and SIGHUP), looked up by routers on the shard's executor. Both answer at
//! once, so they never block the executor.

use std::collections::HashMap;
use std::path::Path;

use super::source::{LookupError, LookupFuture, LookupSource};

/// Longest table line we accept; a longer one is a broken file.
pub const TABLE_LINE_BYTES_MAX: usize = 64 * 1024;
/// Most entries in one text table (a bigger table belongs in cdb or SQLite).
pub const TEXT_TABLE_ENTRIES_MAX: usize = 1_000_000;

/// Parses a text table. Each entry is a key and a value separated by
/// whitespace (`key value`, Postfix and sendmail maps) or by a colon that
/// comes before any whitespace (`key: value`, aliases(5)). Lines starting
/// with whitespace continue the previous value; `#` starts a comment line;
/// keys are lower-cased. A key given twice keeps its first value (as
/// Postfix warns and does). Errors name `path:line`.
pub fn parse_text(path: &Path, text: &str) -> Result<Vec<(String, String)>, String> {
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut current: Option<(usize, String, String)> = None;
    let finish = |current: Option<(usize, String, String)>,
                  entries: &mut Vec<(String, String)>,
                  seen: &mut HashMap<String, ()>| {
        if let Some((_, key, value)) = current {
            if seen.insert(key.clone(), ()).is_none() {
                entries.push((key, value.trim().to_string()));
            }
        }
    };
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.len() > TABLE_LINE_BYTES_MAX {
            return Err(format!("{}:{line_no}: line longer than {TABLE_LINE_BYTES_MAX} bytes", path.display()));
        }
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match current.as_mut() {
                Some((_, _, value)) => {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                None => return Err(format!("{}:{line_no}: continuation line without an entry", path.display())),
            }
            continue;
        }
        finish(current.take(), &mut entries, &mut seen);
        if line.starts_with(':') {
            return Err(format!("{}:{line_no}: entry without a key", path.display()));
        }
        let space = line.find([' ', '\t']).unwrap_or(line.len());
        let (key, value) = match line.find(':') {
            Some(colon) if colon < space => (&line[..colon], &line[colon + 1..]),
            _ => (&line[..space], &line[space..]),
        };
        if key.is_empty() {
            return Err(format!("{}:{line_no}: entry without a key", path.display()));
        }
        current = Some((line_no, key.to_lowercase(), value.to_string()));
        if entries.len() >= TEXT_TABLE_ENTRIES_MAX {
            return Err(format!("{}:{line_no}: more than {TEXT_TABLE_ENTRIES_MAX} entries", path.display()));
        }
    }
    finish(current.take(), &mut entries, &mut seen);
    Ok(entries)
}

/// A text table held in memory.
pub struct TextTable {
    describe: String,
    map: HashMap<String, String>,
}

impl TextTable {
    pub fn open(path: &Path) -> Result<TextTable, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let map = parse_text(path, &text)?.into_iter().collect();
        Ok(TextTable { describe: path.display().to_string(), map })
    }

    /// The value of `key`, answered at once.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl LookupSource for TextTable {
    fn lookup<'a>(&'a self, key: &'a str) -> LookupFuture<'a> {
        let value = self.get(key).map(str::to_string);
        Box::pin(std::future::ready(Ok(value)))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// A cdb file (D. J. Bernstein's constant database), memory-mapped. Built by
/// `ringpost makemap`, keys lower-cased; replaced atomically by rename, so a
/// reader sees the old or the new file, and SIGHUP opens the new one.
pub struct CdbTable {
    describe: String,
    cdb: cdb::CDB,
}

impl CdbTable {
    pub fn open(path: &Path) -> Result<CdbTable, String> {
        let cdb = cdb::CDB::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(CdbTable { describe: format!("cdb:{}", path.display()), cdb })
    }

    pub fn get(&self, key: &str) -> Result<Option<String>, LookupError> {
        match self.cdb.get(key.as_bytes()) {
            None => Ok(None),
            Some(Ok(bytes)) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Some(Err(e)) => Err(LookupError::Config(format!("{}: {e}", self.describe))),
        }
    }
}

impl LookupSource for CdbTable {
    fn lookup<'a>(&'a self, key: &'a str) -> LookupFuture<'a> {
        Box::pin(std::future::ready(self.get(key)))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// `ringpost makemap`: builds `TEXTFILE.cdb` from the text table at `text`,
/// written to a temporary file and renamed into place. Returns the path
/// written and the number of entries.
pub fn makemap(text_path: &Path) -> Result<(std::path::PathBuf, usize), String> {
    let text = std::fs::read_to_string(text_path).map_err(|e| format!("{}: {e}", text_path.display()))?;
    let entries = parse_text(text_path, &text)?;
    let mut out = text_path.as_os_str().to_owned();
    out.push(".cdb");
    let out = std::path::PathBuf::from(out);
    let name = out.to_string_lossy().into_owned();
    let mut writer = cdb::CDBWriter::create(&name).map_err(|e| format!("{name}.tmp: {e}"))?;
    for (key, value) in &entries {
        writer.add(key.as_bytes(), value.as_bytes()).map_err(|e| format!("{name}.tmp: {e}"))?;
    }
    writer.finish().map_err(|e| format!("{name}: {e}"))?;
    Ok((out, entries.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_sendmail_and_aliases_lines() {
        let text = "# comment\nAlice@Example.org  alice\nroot: admin,\n  backup\n@example.org\terror:5.1.1:550 No such user here\n\nkey:value\ndup a\ndup b\n";
        let entries = parse_text(Path::new("t"), text).expect("parses");
        assert_eq!(
            entries,
            vec![
                ("alice@example.org".into(), "alice".into()),
                ("root".into(), "admin, backup".into()),
                ("@example.org".into(), "error:5.1.1:550 No such user here".into()),
                ("key".into(), "value".into()),
                ("dup".into(), "a".into()),
            ]
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let error = parse_text(Path::new("/etc/t"), "a b\n  c\n\n:x y\n").unwrap_err();
        assert_eq!(error, "/etc/t:4: entry without a key");
        let error = parse_text(Path::new("/etc/t"), "  c\n").unwrap_err();
        assert_eq!(error, "/etc/t:1: continuation line without an entry");
    }

    #[test]
    fn makemap_builds_a_cdb_that_reads_back() {
        let dir = std::env::temp_dir().join(format!("ringpost-makemap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("virtusertable");
        std::fs::write(&text, "bob@example.org bob\n@example.org error:5.1.1:550 nope\n").unwrap();
        let (out, count) = makemap(&text).expect("builds");
        assert_eq!(count, 2);
        let table = CdbTable::open(&out).expect("opens");
        assert_eq!(table.get("bob@example.org"), Ok(Some("bob".into())));
        assert_eq!(table.get("carol@example.org"), Ok(None));
        assert!(!dir.join("virtusertable.cdb.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
