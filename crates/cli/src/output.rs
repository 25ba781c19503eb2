//! What commands print: lines and JSON values on stdout (a closed pipe or a full disk ends the
//! command, never a panic), the typed JSON shapes several commands share, and errors as one
//! line.

use std::fmt;
use std::io::Write as _;

use serde::Serialize;
use vmattest_core::chain::ComponentRoot;
use vmattest_core::record::ImageMeasurement;
use vmattest_store::{TakeSummary, Verified};

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

#[derive(Debug, Serialize)]
pub struct ImageJson {
    pub path: String,
    pub alg: &'static str,
    pub root: String,
    pub pages: u64,
    pub bytes: u64,
    pub salt: String,
}

impl From<&ImageMeasurement> for ImageJson {
    fn from(m: &ImageMeasurement) -> ImageJson {
        ImageJson {
            path: m.path.clone(),
            alg: m.params.alg().name(),
            root: m.root.to_hex(),
            pages: m.pages(),
            bytes: m.len,
            salt: hex::encode(m.params.salt()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ComponentJson {
    pub name: String,
    pub kind: &'static str,
    pub bytes: u64,
    pub root: String,
}

pub fn components_json(c: &[ComponentRoot]) -> Vec<ComponentJson> {
    c.iter()
        .map(|c| ComponentJson {
            name: c.name.clone(),
            kind: c.kind.name(),
            bytes: c.len,
            root: c.root.to_hex(),
        })
        .collect()
}

/// A verified chain state.
#[derive(Debug, Serialize)]
pub struct VerifiedJson {
    pub ok: bool,
    pub seq: u64,
    pub link: String,
    pub state_root: String,
    pub time: String,
    pub components: Vec<ComponentJson>,
    /// Where the components were written, if anywhere.
    pub out: Option<String>,
}

pub fn verified_json(v: &Verified, out: Option<&std::path::Path>) -> VerifiedJson {
    VerifiedJson {
        ok: true,
        seq: v.seq.0,
        link: v.link.to_hex(),
        state_root: v.state_root.to_hex(),
        time: v.time.to_string(),
        components: components_json(&v.components),
        out: out.map(|p| p.display().to_string()),
    }
}

/// The fields every take reports, from files or from a VM.
#[derive(Debug, Serialize)]
pub struct SummaryJson {
    pub seq: u64,
    pub link: String,
    pub state_root: String,
    pub changed_pages: u64,
    pub zero_pages: u64,
    pub total_pages: u64,
    pub stored_bytes: u64,
    pub components: Vec<ComponentJson>,
}

impl From<&TakeSummary> for SummaryJson {
    fn from(s: &TakeSummary) -> SummaryJson {
        SummaryJson {
            seq: s.seq.0,
            link: s.link.to_hex(),
            state_root: s.state_root.to_hex(),
            changed_pages: s.changed_pages,
            zero_pages: s.zero_pages,
            total_pages: s.total_pages,
            stored_bytes: s.stored_bytes,
            components: components_json(&s.components),
        }
    }
}

/// Milliseconds, for timings.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints each item as one JSON line, or as `text`.
pub fn show_all<T: Serialize>(
    json: bool,
    items: &[T],
    text: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    for item in items {
        show(json, item, &text)?;
    }
    Ok(())
}
