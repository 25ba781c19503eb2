//! Checks that ran and found a difference: the outcomes a front end reports as a failure
//! after printing what was found.

use std::path::PathBuf;

use vmattest_core::class::{Classify, ErrorClass};

#[derive(Debug, thiserror::Error)]
pub enum Verdict {
    #[error("{store}: {}", .errors.join("; "))]
    StoreDamaged { store: PathBuf, errors: Vec<String> },
    #[error("config check failed: {count} of {total} params differ from {reference}: {}", .names.join(", "))]
    ConfigDiffers {
        count: usize,
        total: usize,
        reference: PathBuf,
        names: Vec<String>,
    },
    #[error("{vm}: differs from seq {seq} in {}", .components.join(", "))]
    SnapshotDiffers {
        vm: String,
        seq: u64,
        components: Vec<String>,
    },
    #[error("{vm}: the server's appraisal raised an alert")]
    Alert { vm: String },
}

impl Classify for Verdict {
    fn class(&self) -> ErrorClass {
        ErrorClass::Verification
    }
}
