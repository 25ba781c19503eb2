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
