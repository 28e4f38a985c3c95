//! The fuzz tests' runner (feature `fuzzing`, for the crates' unit tests): a property of
//! [`Unstructured`] bytes is first run on every input of its corpus, kept in the
//! repository under `fuzz/corpus/<target>/`, then on random inputs of growing size for
//! `FNRT_FUZZ_MS` (1000 ms by default, CI's bound). An input that fails is written into
//! the corpus before the failure goes on, so it is replayed on every later run once
//! committed. `FNRT_FUZZ_KEEP=N` keeps N inputs that passed, of growing sizes (to seed a
//! target's corpus).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use arbitrary::{Result, Unstructured};
use rand::RngCore;
use sha2::Digest;

/// Where `target`'s corpus is kept.
pub fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

/// Runs `prop` on `target`'s corpus, then on random inputs for the budget.
pub fn run(target: &str, mut prop: impl FnMut(&mut Unstructured<'_>) -> Result<()>) {
    let dir = corpus(target);
    let mut inputs: Vec<PathBuf> =
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    inputs.sort();
    for path in &inputs {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| prop(&mut Unstructured::new(&bytes)))) {
            eprintln!("fuzz {target}: the corpus input {} fails", path.display());
            resume_unwind(p);
        }
    }
    let budget = Duration::from_millis(crate::fuzz_budget_ms());
    let keep: usize = std::env::var("FNRT_FUZZ_KEEP").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let (started, mut runs, mut kept) = (Instant::now(), 0u64, 0usize);
    let mut rng = rand::rng();
    while started.elapsed() < budget {
        // Sizes grow with the runs, as the structures the properties build do.
        let most = 16 + (runs as usize / 8).min(64 << 10);
        let mut bytes = vec![0u8; (rng.next_u32() as usize) % (most + 1)];
        rng.fill_bytes(&mut bytes);
        runs += 1;
        match catch_unwind(AssertUnwindSafe(|| prop(&mut Unstructured::new(&bytes)))) {
            Err(p) => {
                let saved = save(&dir, &bytes);
                eprintln!(
                    "fuzz {target}: failed after {runs} runs; the input is saved as {saved} (commit it)"
                );
                resume_unwind(p);
            }
            // Kept at runs 1, 2, 4, 8...: inputs of every size.
            Ok(Ok(())) if kept < keep && runs.is_power_of_two() => {
                save(&dir, &bytes);
                kept += 1;
            }
            Ok(_) => {}
        }
    }
    eprintln!("fuzz {target}: {} corpus inputs, {runs} random runs in {budget:?}", inputs.len());
}

fn save(dir: &std::path::Path, bytes: &[u8]) -> String {
    let path = dir.join(hex::encode(&sha2::Sha256::digest(bytes)[..8]));
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, bytes)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("nowhere ({}: {e})", path.display()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_input_is_kept_in_the_corpus_and_replayed_first() {
        let target = "_runner_self_test";
        let dir = corpus(target);
        let _ = std::fs::remove_dir_all(&dir);
        // Fails on any input whose first byte is 7.
        let prop = |u: &mut Unstructured<'_>| {
            let b: u8 = u.arbitrary()?;
            assert_ne!(b, 7, "seven");
            Ok(())
        };
        assert!(catch_unwind(|| run(target, prop)).is_err(), "1 s of random bytes meets a 7");
        let saved: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(saved.len(), 1, "{saved:?}");
        assert_eq!(std::fs::read(&saved[0]).unwrap()[0], 7);
        // Replayed first: it fails again at once, whatever the random inputs would do.
        let started = Instant::now();
        assert!(catch_unwind(|| run(target, prop)).is_err());
        assert!(started.elapsed() < Duration::from_millis(500));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
