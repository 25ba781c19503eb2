//! `vmattest`: attested VM snapshots from the command line. Each command parses its
//! arguments, calls one library workflow and prints; the exit code comes from the class of the
//! error (docs/ERRORS.md).

mod args;
mod cmd;
mod output;
mod progress;
mod userconf;

use std::io::Write as _;
use std::process::ExitCode;

/// Exit code of a command whose standard output was closed early (as a shell reports a death
/// by SIGPIPE).
const EXIT_CLOSED_PIPE: u8 = 141;

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
    let cli = args::parse();
    let json = cli.json;
    let result = cmd::run(cli).and_then(|()| {
        std::io::stdout()
            .flush()
            .map_err(|e| output::OutputError(e).into())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err, json),
    }
}

/// Prints the error on one line of stderr (and as one JSON object on stdout with `--json`);
/// returns the exit code of its class.
fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    if output::closed_pipe(err) {
        return ExitCode::from(EXIT_CLOSED_PIPE);
    }
    let class = vmattest_host::class::classify_with(err.as_ref(), &vmattest_agent::class_of);
    let message = output::one_line(err);
    let _ = writeln!(std::io::stderr(), "vmattest: {message}");
    if json {
        let obj = serde_json::json!({"ok": false, "code": class.code(), "error": message});
        let _ = writeln!(std::io::stdout(), "{obj}");
    }
    ExitCode::from(class.exit_code())
}
