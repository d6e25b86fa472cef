//! Config files through the binary: `ringmesh validate` and `ringmesh --config` reject invalid
//! configs, naming the TOML path and line of every error; the shipped examples are valid.
//!
//! Each file in `tests/configs/invalid/` marks the lines where errors are expected with a comment
//! `# ERROR <path>[: <text the message contains>]` (`-` as the path for errors without one, such
//! as TOML syntax errors). The file must produce exactly those errors: no fewer, no more.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tests::{Driver, both_drivers, repo_root, run_ringmesh};

/// `validate` reads one file and cannot hang; this is only a safety net.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One expected error, from a `# ERROR` marker.
#[derive(Debug)]
struct Expected {
    line: usize,
    /// Empty for errors without a path.
    path: String,
    needle: String,
}

fn invalid_configs() -> Vec<PathBuf> {
    let dir = repo_root().join("tests/configs/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn expected_errors(file: &Path) -> Vec<Expected> {
    let text = std::fs::read_to_string(file).expect("read the config");
    let expected: Vec<Expected> = text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let marker = line.split_once("# ERROR ")?.1.trim();
            let (path, needle) = marker.split_once(": ").unwrap_or((marker, ""));
            Some(Expected {
                line: i + 1,
                path: if path == "-" {
                    String::new()
                } else {
                    path.to_owned()
                },
                needle: needle.trim().to_owned(),
            })
        })
        .collect();
    assert!(
        !expected.is_empty(),
        "{} has no `# ERROR` marker",
        file.display()
    );
    expected
}

/// Error lines in `output` for `file`: `FILE:LINE:COL: [PATH: ]message`, with any log prefix
/// before `FILE` ignored. Returns (line, column, rest).
fn reported_errors(output: &str, file: &Path) -> Vec<(usize, usize, String)> {
    let prefix = format!("{}:", file.display());
    output
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find(&prefix)? + prefix.len()..];
            let (line_no, rest) = rest.split_once(':')?;
            let (column, rest) = rest.split_once(':')?;
            Some((
                line_no.parse().ok()?,
                column.parse().ok()?,
                rest.trim().to_owned(),
            ))
        })
        .collect()
}

/// Checks that `output` reports exactly the errors marked in `file`.
fn assert_reports_marked_errors(file: &Path, output: &str, how: &str) {
    let expected = expected_errors(file);
    let reported = reported_errors(output, file);
    for e in &expected {
        let found = reported.iter().any(|(line, column, rest)| {
            let (path, message) = match rest.split_once(": ") {
                Some((path, message)) if !e.path.is_empty() => (path, message),
                _ => ("", rest.as_str()),
            };
            *line == e.line && *column > 0 && path == e.path && message.contains(&e.needle)
        });
        assert!(
            found,
            "{how} {}: expected an error at line {} with path {:?} containing {:?}; \
             output:\n{output}",
            file.display(),
            e.line,
            e.path,
            e.needle
        );
    }
    assert_eq!(
        reported.len(),
        expected.len(),
        "{how} {}: reported errors {reported:?} differ from the marked ones {expected:?}",
        file.display()
    );
}

#[test]
fn there_are_at_least_ten_distinct_invalid_configs() {
    let files = invalid_configs();
    assert!(files.len() >= 10, "only {} invalid configs", files.len());
    let mut texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read"))
        .collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), files.len(), "invalid configs must differ");
}

#[test]
fn validate_names_path_and_line_of_every_error() {
    for file in invalid_configs() {
        let run = run_ringmesh([Path::new("validate"), &file], COMMAND_TIMEOUT);
        assert!(
            !run.status.success(),
            "validate accepted {}:\n{}",
            file.display(),
            run.stderr
        );
        assert_reports_marked_errors(&file, &run.stderr, "validate");
        let count = expected_errors(&file).len();
        assert!(
            run.stderr
                .contains(&format!("{}: {count} error(s)", file.display())),
            "validate should end with the error count; stderr:\n{}",
            run.stderr
        );
    }
}

#[test]
fn starting_with_an_invalid_config_fails_and_names_the_errors() {
    for file in invalid_configs() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let admin_file = dir.path().join("admin-address");
        let run = run_ringmesh(
            [
                "--config".as_ref(),
                file.as_os_str(),
                "--io".as_ref(),
                "epoll".as_ref(),
                "--admin-address-path".as_ref(),
                admin_file.as_os_str(),
            ],
            COMMAND_TIMEOUT,
        );
        assert!(
            !run.status.success(),
            "ringmesh started with {}:\n{}",
            file.display(),
            run.stderr
        );
        assert_reports_marked_errors(&file, &run.stderr, "--config");
        assert!(
            !admin_file.exists(),
            "a rejected config must not get as far as the admin API"
        );
    }
}

#[test]
fn shipped_example_configs_are_valid() {
    let dir = repo_root().join("deploy/examples");
    let examples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(
        !examples.is_empty(),
        "no example configs in {}",
        dir.display()
    );
    for example in examples {
        let run = run_ringmesh([Path::new("validate"), &example], COMMAND_TIMEOUT);
        assert!(
            run.status.success(),
            "{} is invalid:\n{}",
            example.display(),
            run.stderr
        );
        assert!(
            run.stdout.contains(": ok"),
            "validate prints ok: {}",
            run.stdout
        );
    }
}

#[test]
fn schema_command_prints_the_committed_json_schema() {
    let run = run_ringmesh(["schema"], COMMAND_TIMEOUT);
    assert!(run.status.success(), "{}", run.stderr);
    let printed: serde_json::Value =
        serde_json::from_str(&run.stdout).expect("`ringmesh schema` prints JSON");
    let committed_path = repo_root().join("config-schema/ringmesh.schema.json");
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&committed_path).expect("read the committed schema"),
    )
    .expect("the committed schema is JSON");
    assert_eq!(
        printed,
        committed,
        "ringmesh schema differs from {}",
        committed_path.display()
    );
}

both_drivers!(a_listener_that_cannot_bind_is_a_config_error_with_its_line);

/// A listener address already taken is found only when binding at start; it is reported like any
/// config error, with the listener's path and line, and the process exits non-zero.
fn a_listener_that_cannot_bind_is_a_config_error_with_its_line(driver: Driver) {
    // Held without SO_REUSEPORT, so ringmesh's SO_REUSEPORT sockets cannot join it.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address");
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("taken.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\naddress = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nname = \"taken\"\n\
             address = \"{address}\"  # ERROR listeners[0].address: cannot listen on\n\
             protocol = \"tcp\"\ncluster = \"c\"\n\n\
             [[clusters]]\nname = \"c\"\nendpoints = [\"{address}\"]\n"
        ),
    )
    .expect("write the config");
    let run = run_ringmesh(
        [
            "--config".as_ref(),
            config.as_os_str(),
            "--io".as_ref(),
            driver.flag().as_ref(),
        ],
        COMMAND_TIMEOUT,
    );
    assert!(
        !run.status.success(),
        "ringmesh started on a taken address:\n{}",
        run.stderr
    );
    assert_reports_marked_errors(&config, &run.stderr, "--config");
}
