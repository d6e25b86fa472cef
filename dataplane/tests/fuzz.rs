//! The fuzz targets (`fuzz/targets.rs`) as ordinary tests: each replays its committed corpus
//! (`fuzz/corpus/<target>/`), then runs a bounded number of `bolero` iterations, each input
//! tried as it is and as a mutation of a corpus entry (so that short runs get past the first
//! bytes of a grammar). Long campaigns use the same targets through `cargo fuzz`
//! (`docs/FUZZING.md`).

#[path = "fuzz/targets.rs"]
mod targets;

use std::path::PathBuf;

/// Random iterations per target under `cargo test`: seconds at most in a debug build.
const ITERATIONS: usize = 2_000;

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files
        .iter()
        .map(|path| std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect();
    assert!(!inputs.is_empty(), "corpus {} is empty", dir.display());
    inputs
}

/// `data` applied as edits to a corpus entry: the first bytes pick the entry, then each group
/// of four is (operation, position, position, byte).
fn mutate(corpus: &[Vec<u8>], data: &[u8]) -> Vec<u8> {
    let Some((&pick, edits)) = data.split_first() else {
        return corpus[0].clone();
    };
    let mut out = corpus[usize::from(pick) % corpus.len()].clone();
    for edit in edits.chunks_exact(4) {
        let at = (usize::from(edit[1]) << 8 | usize::from(edit[2])) % (out.len() + 1);
        match edit[0] % 5 {
            0 => out.insert(at, edit[3]),
            1 if at < out.len() => {
                out.remove(at);
            }
            2 if at < out.len() => out[at] = edit[3],
            3 if at < out.len() => out[at] ^= 1 << (edit[3] % 8),
            4 => {
                // Repeat a short run: grammars break at lengths and repetitions.
                let end = (at + usize::from(edit[3] % 16)).min(out.len());
                let run = out[at..end].to_vec();
                out.splice(at..at, run);
            }
            _ => {}
        }
    }
    out
}

fn run(name: &str) {
    let (_, target) = targets::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    let seeds = corpus(name);
    for seed in &seeds {
        target(seed);
    }
    let runs = std::sync::atomic::AtomicUsize::new(0);
    bolero::check!()
        .with_iterations(ITERATIONS)
        .for_each(|data: &[u8]| {
            runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            target(data);
            target(&mutate(&seeds, data));
        });
    eprintln!("{name}: {} runs", runs.into_inner());
}

/// Both harnesses run every target: a test here, a corpus, and a `cargo fuzz` binary.
#[test]
fn every_target_has_a_test_a_corpus_and_a_fuzz_binary() {
    let source = include_str!("fuzz.rs");
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in targets::TARGETS {
        assert!(
            source.contains(&format!("fn {name}()")),
            "no test for {name}"
        );
        corpus(name);
        let binary = format!("fuzz_targets/{name}.rs");
        assert!(fuzz.join(&binary).is_file(), "no fuzz/{binary}");
        assert!(
            manifest.contains(&format!("path = \"{binary}\"")),
            "{binary} is not a [[bin]]"
        );
    }
}

#[test]
fn h1_request() {
    run("h1_request");
}

#[test]
fn h1_response() {
    run("h1_response");
}

#[test]
fn chunked() {
    run("chunked");
}

#[test]
fn detect() {
    run("detect");
}

#[test]
fn h2_guard() {
    run("h2_guard");
}

#[test]
fn header_translation() {
    run("header_translation");
}

#[test]
fn normalize() {
    run("normalize");
}

#[test]
fn config_text() {
    run("config_text");
}

#[test]
fn config_mutated() {
    run("config_mutated");
}

#[test]
fn sni() {
    run("sni");
}

#[test]
fn spiffe() {
    run("spiffe");
}

#[test]
fn trace_context() {
    run("trace_context");
}

#[test]
fn hbone_connect() {
    run("hbone_connect");
}
