//! Where a config comes from: one file, or a directory whose `*.toml` files (sorted by name) are
//! read as one config, so a fleet's config can be split into `listeners.toml`, `clusters.toml`...
//!
//! TOML allows an array of tables (`[[clusters]]`) to continue across the joined files, so the
//! split is free-form; a table such as `[admin]` may still appear only once. Errors carry lines
//! of the joined text; [`Source::locate`] maps them back to a file and its own line.

use std::io;
use std::path::{Path, PathBuf};

use config_schema::ConfigError;

/// A config's text and where each part of it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The whole config.
    pub text: String,
    /// For each file, in order: its path and the 1-based line of the text where it starts.
    parts: Vec<(PathBuf, usize)>,
}

impl Source {
    /// Reads `path`: a file as it is, a directory as its `*.toml` files joined in name order.
    pub fn read(path: &Path) -> io::Result<Source> {
        if !path.is_dir() {
            let text = std::fs::read_to_string(path)?;
            return Ok(Source {
                text,
                parts: vec![(path.to_path_buf(), 1)],
            });
        }
        let files = toml_files(path)?;
        if files.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no *.toml file in {}", path.display()),
            ));
        }
        let mut text = String::new();
        let mut parts = Vec::with_capacity(files.len());
        for file in files {
            let part = std::fs::read_to_string(&file)?;
            parts.push((file, text.lines().count() + 1));
            text.push_str(&part);
            if !part.ends_with('\n') {
                text.push('\n');
            }
        }
        Ok(Source { text, parts })
    }

    /// The file and the line in it of `line` of the joined text (0 stays 0: no position).
    pub fn locate(&self, line: usize) -> (&Path, usize) {
        let index = self
            .parts
            .partition_point(|(_, start)| *start <= line)
            .saturating_sub(1);
        let (path, start) = &self.parts[index];
        let in_file = if line == 0 { 0 } else { line + 1 - start };
        (path, in_file)
    }

    /// `error` as `file:line:column: path: message`, with the line mapped back to its file.
    pub fn describe(&self, error: &ConfigError) -> String {
        let (file, line) = self.locate(error.line);
        let located = ConfigError {
            line,
            ..error.clone()
        };
        format!("{}:{located}", file.display())
    }
}

/// The `*.toml` files directly inside `dir`, sorted by name.
pub fn toml_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ringmesh-control-source-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    #[test]
    fn a_directory_is_its_toml_files_in_name_order_and_lines_map_back() {
        let dir = scratch_dir("dir");
        std::fs::write(
            dir.join("20-clusters.toml"),
            "[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("10-listeners.toml"),
            "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\ncluster = \"a\"", // no final newline
        )
        .expect("write");
        std::fs::write(dir.join("notes.txt"), "ignored").expect("write");
        let source = Source::read(&dir).expect("read");
        assert!(source.text.starts_with("[[listeners]]"));
        assert!(
            config_schema::parse(&source.text).is_ok(),
            "{}",
            source.text
        );
        // Line 6 of the joined text is line 1 of the second file.
        let (file, line) = source.locate(6);
        assert!(file.ends_with("20-clusters.toml"));
        assert_eq!(line, 1);
        let (file, line) = source.locate(5);
        assert!(file.ends_with("10-listeners.toml"));
        assert_eq!(line, 5);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_are_described_with_their_file() {
        let dir = scratch_dir("errors");
        std::fs::write(dir.join("a.toml"), "[admin]\n").expect("write");
        std::fs::write(dir.join("b.toml"), "[runtime]\nworkers = \"x\"\n").expect("write");
        let source = Source::read(&dir).expect("read");
        let errors = config_schema::parse(&source.text).expect_err("invalid");
        let text = source.describe(&errors[0]);
        assert!(text.contains("b.toml:2:"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let dir = scratch_dir("empty");
        assert!(Source::read(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
