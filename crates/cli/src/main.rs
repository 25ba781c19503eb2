//! `vmattest`: measure images, sign and verify records, prove pages.

mod args;
mod cmd;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser as _;

/// A check ran and found a mismatch (exit 1), as opposed to bad input (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VerificationFailed(pub String);

fn main() -> ExitCode {
    if std::env::var_os("TSS2_LOG").is_none() {
        // The TPM stack logs refused commands (an unseal under changed PCRs) to stderr itself;
        // vmattest reports them as its one-line error instead.
        // SAFETY: first statement of main, before any thread exists, so no other thread can
        // read the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("TSS2_LOG", "all+none");
        }
    }
    let cli = args::Cli::parse();
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vmattest: {err:#}");
            if err.downcast_ref::<VerificationFailed>().is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}
