//! Configuration errors: every one names where the offending text came from
//! (file, line and column, or the `--set key=value` argument) and the dotted
//! key it concerns, so `ringpost check-config` can point at the exact spot.
//!
//! Place in the pipeline: produced while loading the configuration at
//! start-up; `main` prints them and exits before any shard starts.

use std::fmt;
use std::path::PathBuf;

/// Where a piece of configuration text came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A position in a configuration file; line and column count from 1,
    /// the column in characters.
    File { path: PathBuf, line: usize, column: usize },
    /// A command-line override; holds the argument as given (`key=value`).
    Override(String),
}

impl Origin {
    /// The line in the configuration file, or `None` for an override.
    pub fn line(&self) -> Option<usize> {
        match self {
            Origin::File { line, .. } => Some(*line),
            Origin::Override(_) => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, column } => write!(f, "{}:{line}:{column}", path.display()),
            Origin::Override(text) => write!(f, "--set {text}"),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{}: cannot read configuration: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The text is not TOML (in the file, or a bracketed/quoted `--set` value).
    #[error("{origin}: TOML syntax error: {message}")]
    Syntax { origin: Origin, message: String },
    /// A `--set` argument that is not `key=value` with a well-formed dotted key,
    /// or whose key runs through a value that is not a table.
    #[error("--set {text}: {reason}")]
    BadOverride { text: String, reason: String },
    /// A key that no configuration table has (often a misspelling).
    #[error("{origin}: unknown key {key}")]
    UnknownKey { origin: Origin, key: String },
    /// A value of the wrong TOML type.
    #[error("{origin}: {key}: expected {expected}, found {found}")]
    WrongType { origin: Origin, key: String, expected: &'static str, found: &'static str },
    /// A value of the right type that fails validation.
    #[error("{origin}: {key}: {reason}")]
    Invalid { origin: Origin, key: String, reason: String },
}

impl ConfigError {
    /// Where the offending text came from, when the error has one place.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ConfigError::Syntax { origin, .. }
            | ConfigError::UnknownKey { origin, .. }
            | ConfigError::WrongType { origin, .. }
            | ConfigError::Invalid { origin, .. } => Some(origin),
            ConfigError::Read { .. } | ConfigError::BadOverride { .. } => None,
        }
    }

    /// The dotted key the error concerns (`relay.networks[0]`), if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::WrongType { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } | ConfigError::BadOverride { .. } => None,
        }
    }
}
