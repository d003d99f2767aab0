//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets'
//! bodies (`hast_core::fuzz_targets`), so that `cargo test` on stable checks in CI what the
//! fuzzers found: every input still decodes without a panic and keeps its assertions.
//! Running the fuzzers themselves needs cargo-fuzz (see `fuzz/README.md`).

#![allow(clippy::unwrap_used)] // a test that cannot read its corpus must panic

use std::collections::BTreeSet;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use hast_core::fuzz_targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The file names (without `.rs`) or directory names in `dir`.
fn names_in(dir: &Path, suffix: &str) -> BTreeSet<String> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|name| name.strip_suffix(suffix).map(str::to_owned))
        .collect()
}

#[test]
fn every_fuzz_target_has_a_body_and_a_corpus() {
    let listed: BTreeSet<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(listed.len(), TARGETS.len(), "a target is listed twice");
    let binaries = names_in(&fuzz_dir().join("fuzz_targets"), ".rs");
    assert_eq!(
        binaries, listed,
        "fuzz/fuzz_targets/*.rs and TARGETS differ"
    );
    let corpora = names_in(&fuzz_dir().join("corpus"), "");
    assert_eq!(corpora, listed, "fuzz/corpus/* and TARGETS differ");
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &listed {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}

#[test]
fn corpora_replay_without_failures() {
    let mut failures = Vec::new();
    for (name, body) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "corpus {} is empty", dir.display());
        for file in &files {
            let data = fs::read(file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
        eprintln!("{name}: {} inputs replayed", files.len());
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}
