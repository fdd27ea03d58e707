//! Replays the committed fuzz corpora on stable: every file of every
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the
//! same harness the fuzzer runs (`llama_adapter_web::fuzzing`), which must
//! not panic and must finish within a time bound. The fuzzer itself
//! (cargo-fuzz, nightly) is run by hand: docs/ROBUSTNESS.md.

use std::path::Path;
use std::time::{Duration, Instant};

use llama_adapter_web::fuzzing::TARGETS;

/// libFuzzer's `-timeout` for the runs was 10 s; a replayed input must take
/// well under that (the slowest corpus input takes about 0.1 s in release).
const PER_INPUT: Duration = Duration::from_secs(10);

fn replay(folder: &str) -> usize {
    let mut count = 0;
    for (name, harness) in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(folder).join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let start = Instant::now();
            let result = std::panic::catch_unwind(|| harness(&data));
            let took = start.elapsed();
            assert!(result.is_ok(), "{name}: {} panicked", file.display());
            assert!(took < PER_INPUT, "{name}: {} took {took:?}", file.display());
            count += 1;
        }
    }
    count
}

#[test]
fn corpora_replay_without_panics_or_hangs() {
    let n = replay("corpus");
    // Every target has a committed corpus.
    for (name, _) in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
        assert!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) > 0, "no corpus for {name} in {}", dir.display());
    }
    assert!(n > 0);
}

#[test]
fn regressions_replay_without_panics_or_hangs() {
    replay("regressions");
}
