//! What commands print: lines and JSON values on stdout (a closed pipe or a full disk ends the
//! command, never a panic), the typed JSON shapes several commands share, and errors as one
//! line.

use std::fmt;
use std::io::Write as _;

use serde::Serialize;
pub use vmattest_host::report::{ImageJson, verified_json};

/// Standard output could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output")]
pub struct OutputError(#[source] pub std::io::Error);

/// Prints one line on stdout.
pub fn line(args: fmt::Arguments<'_>) -> Result<(), OutputError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(OutputError)
}

/// `println!` that returns the write error instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))?
    };
}
pub(crate) use outln;

/// Prints one JSON value on its own line.
pub fn print<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string(value)?;
    line(format_args!("{text}"))?;
    Ok(())
}

/// Prints `value` as JSON, or as its text form otherwise.
pub fn report<T: Serialize + fmt::Display>(json: bool, value: &T) -> anyhow::Result<()> {
    show(json, value, ToString::to_string)
}

/// Prints each item as one JSON line, or as its text form.
pub fn report_all<T: Serialize + fmt::Display>(json: bool, items: &[T]) -> anyhow::Result<()> {
    items.iter().try_for_each(|i| report(json, i))
}

/// Prints `value` as JSON, or the `text` lines otherwise.
pub fn show<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        print(value)
    } else {
        line(format_args!("{}", text(value)))?;
        Ok(())
    }
}

/// Whether the error is a write to a stdout whose reader went away.
pub fn closed_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<OutputError>()
            .is_some_and(|o| o.0.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes on one line, each cause once: a cause whose text its wrapper
/// already shows is not repeated.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for e in err.chain() {
        let text = e.to_string();
        let text = text.trim();
        if text.is_empty() || out.contains(text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
    }
    out.replace(['\n', '\r'], " ")
}
