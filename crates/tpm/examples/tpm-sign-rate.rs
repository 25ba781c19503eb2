//! Signatures per second with the TPM signing key (ECDSA P-384 / SHA-384) through the
//! workspace `Signer` trait, over 2 s.
//!
//! ```text
//! VMATTEST_TPM_TCTI=swtpm:host=127.0.0.1,port=2321 \
//!     cargo run --release -p vmattest-tpm --features tpm --example tpm-sign-rate
//! ```
//!
//! Each signature hashes the message, re-creates the key (TPM2_CreatePrimary), signs and
//! flushes it, as `Tpm::sign_digest` always does. Every signature is checked with
//! `vmattest_sign::PublicKey::verify` outside the timed loop.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmattest_sign::Signer as _;
use vmattest_tpm::{Tpm, TpmConfig, TpmSigner};

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

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = TpmConfig::from_env()?;
    let mut tpm = Tpm::open(&config)?;
    let info = tpm.info()?;
    println!(
        "TPM {} (manufacturer {:?}, firmware {:#x})",
        config.target, info.manufacturer, info.firmware_version
    );
    let signer = TpmSigner::new(tpm)?;
    let public = signer.public_key();
    println!("signing key {} ({})", signer.key_id(), signer.alg());
    let mut signed = Vec::new();
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < RUN {
        let msg = count.to_be_bytes();
        signed.push((msg, signer.sign(&msg)?));
        count += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    for (msg, sig) in &signed {
        public.verify(msg, sig)?;
    }
    println!(
        "{count} signatures in {secs:.2} s: {:.1} signatures/s (all verified)",
        count as f64 / secs
    );
    Ok(())
}
