//! Signatures per second with the TPM signing key over 2 s.
//!
//! ```text
//! VMATTEST_TPM_TCTI=swtpm:host=127.0.0.1,port=2321 \
//!     cargo run --release -p vmattest-tpm --features tpm --example tpm-sign-rate
//! ```
//!
//! Each signature re-creates the key (TPM2_CreatePrimary), signs and flushes it, as
//! `Tpm::sign_digest` always does.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmattest_tpm::{Tpm, TpmConfig, TpmError};

const RUN: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tpm-sign-rate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), TpmError> {
    let config = TpmConfig::from_env()?;
    let mut tpm = Tpm::open(&config)?;
    let info = tpm.info()?;
    println!(
        "TPM {} (manufacturer {:?}, firmware {:#x})",
        config.target, info.manufacturer, info.firmware_version
    );
    let mut digest = [0u8; 32];
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < RUN {
        digest[..8].copy_from_slice(&count.to_be_bytes());
        tpm.sign_digest(&digest)?;
        count += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{count} signatures in {secs:.2} s: {:.1} signatures/s",
        count as f64 / secs
    );
    Ok(())
}
