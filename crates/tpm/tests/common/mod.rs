//! The shared per-test swtpm, opened through this crate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    dead_code
)]

use std::process::Command;

pub use vmattest_testkit::Swtpm;
use vmattest_tpm::{Tpm, TpmConfig};

pub trait SwtpmExt {
    fn config(&self) -> TpmConfig;
    fn open(&self) -> Tpm;
}

impl SwtpmExt for Swtpm {
    fn config(&self) -> TpmConfig {
        TpmConfig::tcti(self.tcti())
    }

    /// swtpm serves one client at a time and may still be closing the previous connection
    /// (or the start-up probe): a fresh connection can fail at first, so retry briefly.
    fn open(&self) -> Tpm {
        let mut last = None;
        for _ in 0..40 {
            match Tpm::open(&self.config()) {
                Ok(tpm) => return tpm,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("cannot open swtpm: {last:?}");
    }
}

/// Runs a program, returning whether it succeeded and its combined output.
pub fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
