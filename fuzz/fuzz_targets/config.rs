//! Any bytes as the configuration file: `ringpost::config::load_str`
//! (TOML syntax, then every table, key, type and value check of
//! `src/config/read.rs`) loads it or refuses it, and never panics.
//!
//! Input: the whole input is the file's text (not UTF-8: the lossy
//! conversion, as a file read with replacement would give). The seed
//! corpus (`fuzz/make-corpus`) is every TOML example in docs/ and
//! debian/ringpost.toml.
//!
//! Checked:
//! - an error that concerns the file names a line within it (and a column
//!   from 1), and one from an override names no line;
//! - a loaded configuration prints (`to_toml`, what `check-config`
//!   shows) to text that loads back to an equal configuration.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ringpost::config::{load_str, Origin};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.toml");
    match load_str(path, &text, &[]) {
        Ok(config) => {
            let printed = config.to_toml();
            match load_str(Path::new("printed.toml"), &printed, &[]) {
                Ok(again) => assert!(again == config, "the printed configuration loads differently:\n{printed}"),
                Err(error) => panic!("the printed configuration does not load: {error}\n{printed}"),
            }
        }
        Err(error) => {
            if let Some(Origin::File { path: origin_path, line, column }) = error.origin() {
                assert_eq!(origin_path, path);
                let line_count = text.lines().count().max(1) + 1;
                assert!(*line >= 1 && *line <= line_count, "line {line} of {line_count}: {error}");
                assert!(*column >= 1, "column {column}: {error}");
            }
            let message = error.to_string();
            assert!(!message.is_empty());
        }
    }
});
