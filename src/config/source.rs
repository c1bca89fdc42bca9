//! The configuration source: the TOML file and the `--set` overrides merged
//! into one tree in which every key and value remembers where it was written
//! (file line and column, or the override argument). Reading the typed
//! `Config` out of this tree (`read.rs`) can then name the exact origin of any
//! value it refuses.
//!
//! Place in the pipeline: the first step of loading the configuration at
//! start-up: text -> `Table` (here) -> `Config` (`read.rs`).

use std::path::Path;

use toml_edit::{ImDocument, InlineTable, Item, Key, Value as TomlValue};

use super::error::{ConfigError, Origin};

/// A value and where it was written.
#[derive(Clone, Debug)]
pub struct Node {
    pub value: Value,
    pub origin: Origin,
}

#[derive(Clone, Debug)]
pub enum Value {
    String(String),
    Integer(i64),
    /// A spam score (`[[scanner]] reject_score`).
    Float(f64),
    Boolean(bool),
    /// No configuration key takes a date or time; only its type is kept.
    Datetime,
    Array(Vec<Node>),
    Table(Table),
}

impl Value {
    /// The type's name with its article, for "expected …, found …".
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

/// One key of a table: its name, where the key was written, and its value.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: String,
    pub key_origin: Origin,
    pub node: Node,
}

/// A table in document order.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub entries: Vec<Entry>,
}

impl Table {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.key == key)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|entry| entry.key == key)
    }
}

/// Turns byte offsets in one file into line and column origins.
struct FileText<'a> {
    path: &'a Path,
    text: &'a str,
}

impl FileText<'_> {
    fn origin_at(&self, offset: usize) -> Origin {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        Origin::File {
            path: self.path.to_path_buf(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }

    /// The origin of `span`, or `fallback` when the parser kept no span.
    fn origin_of(&self, span: Option<std::ops::Range<usize>>, fallback: &Origin) -> Origin {
        match span {
            Some(span) => self.origin_at(span.start),
            None => fallback.clone(),
        }
    }
}

/// Parses the configuration file's text into a tree with file origins.
pub fn parse_file(path: &Path, text: &str) -> Result<Table, ConfigError> {
    let file = FileText { path, text };
    let document = ImDocument::parse(text).map_err(|error| ConfigError::Syntax {
        origin: file.origin_at(error.span().map_or(0, |span| span.start)),
        message: one_line(error.message()),
    })?;
    let root_origin = file.origin_at(0);
    Ok(convert_table(&file, document.as_table(), &root_origin))
}

fn convert_table(file: &FileText<'_>, table: &toml_edit::Table, table_origin: &Origin) -> Table {
    let mut entries = Vec::with_capacity(table.len());
    for (key, item) in table.iter() {
        let key_origin = file.origin_of(table.key(key).and_then(Key::span), table_origin);
        let node = match item {
            Item::None => continue,
            Item::Value(value) => convert_value(file, value, &key_origin),
            Item::Table(inner) => {
                let origin = file.origin_of(inner.span(), &key_origin);
                Node { value: Value::Table(convert_table(file, inner, &origin)), origin }
            }
            Item::ArrayOfTables(array) => {
                let origin = file.origin_of(array.span(), &key_origin);
                let elements = array
                    .iter()
                    .map(|inner| {
                        let origin = file.origin_of(inner.span(), &origin);
                        Node { value: Value::Table(convert_table(file, inner, &origin)), origin }
                    })
                    .collect();
                Node { value: Value::Array(elements), origin }
            }
        };
        entries.push(Entry { key: key.to_string(), key_origin, node });
    }
    Table { entries }
}

fn convert_inline_table(file: &FileText<'_>, table: &InlineTable, table_origin: &Origin) -> Table {
    let mut entries = Vec::with_capacity(table.len());
    for (key, value) in table.iter() {
        let key_origin = file.origin_of(table.key(key).and_then(Key::span), table_origin);
        let node = convert_value(file, value, &key_origin);
        entries.push(Entry { key: key.to_string(), key_origin, node });
    }
    Table { entries }
}

fn convert_value(file: &FileText<'_>, value: &TomlValue, fallback: &Origin) -> Node {
    let origin = file.origin_of(value.span(), fallback);
    let value = match value {
        TomlValue::String(s) => Value::String(s.value().clone()),
        TomlValue::Integer(i) => Value::Integer(*i.value()),
        TomlValue::Float(f) => Value::Float(*f.value()),
        TomlValue::Boolean(b) => Value::Boolean(*b.value()),
        TomlValue::Datetime(_) => Value::Datetime,
        TomlValue::Array(array) => Value::Array(array.iter().map(|v| convert_value(file, v, &origin)).collect()),
        TomlValue::InlineTable(table) => Value::Table(convert_inline_table(file, table, &origin)),
    };
    Node { value, origin }
}

/// Applies one `--set key=value` argument to `root`, replacing whatever the
/// file said for that key. The key is a dotted path; the value is TOML, and a
/// bare word that is not TOML (`127.0.0.1:2626`, `mx.example.org`) is taken as
/// a string. Text that starts like a TOML string or table, or like an array
/// of strings, but does not parse is a syntax error rather than a string, so a
/// typing slip in `["127.0.0.1:2600"` is not silently read as a host name.
pub fn apply_override(root: &mut Table, text: &str) -> Result<(), ConfigError> {
    let bad = |reason: &str| ConfigError::BadOverride { text: text.to_string(), reason: reason.to_string() };
    let Some((key_text, value_text)) = text.split_once('=') else {
        return Err(bad("expected key=value"));
    };
    let path: Vec<String> = Key::parse(key_text.trim())
        .map_err(|_| bad("the key must be a dotted path such as server.listen"))?
        .iter()
        .map(|key| key.get().to_string())
        .collect();
    let origin = Origin::Override(text.to_string());
    let value = parse_override_value(value_text, &origin)?;
    let (last, parents) = path.split_last().ok_or_else(|| bad("empty key"))?;
    let mut table = root;
    for (depth, segment) in parents.iter().enumerate() {
        if table.get(segment).is_none() {
            let node = Node { value: Value::Table(Table::default()), origin: origin.clone() };
            table.entries.push(Entry { key: segment.clone(), key_origin: origin.clone(), node });
        }
        let entry = table.get_mut(segment).ok_or_else(|| bad("empty key"))?;
        table = match &mut entry.node.value {
            Value::Table(inner) => inner,
            other => {
                let prefix = path[..=depth].join(".");
                return Err(bad(&format!("{prefix} is {}, not a table", other.type_name())));
            }
        };
    }
    let node = override_node(value, &origin);
    match table.get_mut(last) {
        Some(entry) => {
            entry.key_origin = origin;
            entry.node = node;
        }
        None => table.entries.push(Entry { key: last.clone(), key_origin: origin, node }),
    }
    Ok(())
}

fn parse_override_value(text: &str, origin: &Origin) -> Result<Value, ConfigError> {
    let trimmed = text.trim();
    // `[::1]:2626` and `[192.0.2.1]` are bare words; an array of strings has quotes.
    let looks_structured =
        trimmed.starts_with(['"', '\'', '{']) || (trimmed.starts_with('[') && trimmed.contains(['"', '\'']));
    let bare_file = FileText { path: Path::new(""), text: trimmed };
    match trimmed.parse::<TomlValue>() {
        Ok(value) => Ok(convert_value(&bare_file, &value, origin).value),
        Err(error) if looks_structured => {
            Err(ConfigError::Syntax { origin: origin.clone(), message: one_line(error.message()) })
        }
        Err(_) => Ok(Value::String(trimmed.to_string())),
    }
}

/// Marks every node under `node` as coming from `origin` (override values
/// carry no file position).
fn set_origin(node: &mut Node, origin: &Origin) {
    node.origin = origin.clone();
    match &mut node.value {
        Value::Array(elements) => elements.iter_mut().for_each(|element| set_origin(element, origin)),
        Value::Table(table) => {
            for entry in &mut table.entries {
                entry.key_origin = origin.clone();
                set_origin(&mut entry.node, origin);
            }
        }
        _ => {}
    }
}

/// An override's value as a tree whose every node names the override.
fn override_node(value: Value, origin: &Origin) -> Node {
    let mut node = Node { value, origin: origin.clone() };
    set_origin(&mut node, origin);
    node
}

/// The parser's message on one line ("invalid array; expected `]`").
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    lines.join("; ")
}
