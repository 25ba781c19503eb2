//! Binding a link or a configuration to the host's measured state: vmattest's version, the
//! hypervisor binary and the VM config are measured into a PCR with an event log a verifier
//! replays, and the TPM quotes the boot PCRs and that PCR over the bound object
//! (docs/FORMAT.md).

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use vmattest_core::alg::Digest;
use vmattest_core::chain::{ComponentKind, ComponentRoot, SeqNo};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_tpm::PcrBank;

use crate::files::{self, FileError};
use crate::quotefile::{self, QuoteFileError};
use crate::tpm::{self, TpmError};

/// Boot-time PCRs quoted with the bound PCR (firmware, boot loader, kernel).
pub const BOOT_PCRS: [u32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
/// Largest event log read.
const MAX_LOG: u64 = 1 << 20;
/// Largest hypervisor binary measured.
const MAX_HYPERVISOR: u64 = 1 << 30;
/// Domain of the qualifying data of a config statement's quote.
pub const CONFIG_QUOTE_DOMAIN: &[u8] = b"vmattest config-quote v1\0";

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("--bind-pcr {0}: expected 16 to 23 (PCRs 0-15 belong to the boot chain)")]
    Pcr(u32),
    #[error(transparent)]
    Digest(#[from] BadEventDigest),
    #[error("event log {path} line {line}: expected one JSON event")]
    Line {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "PCR {pcr} is {value}, but event log {path} replays to another value: something else extends PCR {pcr}"
    )]
    Foreign {
        pcr: u32,
        value: String,
        path: PathBuf,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(transparent)]
    Quote(#[from] QuoteFileError),
    #[error("{path}: cannot create the event log's directory")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for EventLogError {
    fn class(&self) -> ErrorClass {
        match self {
            EventLogError::Pcr(_) | EventLogError::Line { .. } => ErrorClass::Input,
            EventLogError::Digest(_) => ErrorClass::Verification,
            EventLogError::Foreign { .. } | EventLogError::Dir { .. } => ErrorClass::Environment,
            EventLogError::File(e) => e.class(),
            EventLogError::Tpm(e) => e.class(),
            EventLogError::Quote(e) => e.class(),
        }
    }
}

pub use vmattest_api::host::{BadEventDigest, Event, event_digest, replay};

/// The host's event log: `$VMATTEST_EVENT_LOG`, else under the user's state directory.
pub fn log_path() -> PathBuf {
    if let Some(p) = std::env::var_os("VMATTEST_EVENT_LOG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("vmattest").join("pcr-events.jsonl")
}

fn read_log(path: &Path) -> Result<Vec<Event>, EventLogError> {
    if path.symlink_metadata().is_err() {
        return Ok(Vec::new());
    }
    let text = files::read_text(path, MAX_LOG, "event log")?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| EventLogError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// A program's path: as given when it has a slash, else the first match on `$PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn check_pcr(pcr: u32) -> Result<(), EventLogError> {
    if !(16..=23).contains(&pcr) {
        return Err(EventLogError::Pcr(pcr));
    }
    Ok(())
}

/// Measures what is not yet measured into `pcr` since boot, then quotes the boot PCRs and
/// `pcr` over `link`; writes the quote (with the PCR's events) to STORE/quotes/SEQ.json.
pub fn bind_link(
    store: &Path,
    seq: SeqNo,
    link: &Digest,
    components: &[ComponentRoot],
    hypervisor: Option<&Path>,
    pcr: u32,
) -> Result<PathBuf, EventLogError> {
    check_pcr(pcr)?;
    let mut wanted = vec![Event::new(
        pcr,
        "vmattest",
        env!("CARGO_PKG_VERSION").to_owned(),
    )];
    if let Some(h) = hypervisor {
        let bytes = files::read_capped(h, MAX_HYPERVISOR, "hypervisor")?;
        wanted.push(Event::new(
            pcr,
            "hypervisor",
            format!(
                "{} sha256:{}",
                h.display(),
                hex::encode(Sha256::digest(&bytes))
            ),
        ));
    }
    for c in components
        .iter()
        .filter(|c| c.kind == ComponentKind::Config)
    {
        wanted.push(Event::new(pcr, "config", format!("{} {}", c.name, c.root)));
    }
    let (q, events) = measure_and_quote(pcr, wanted, link.as_bytes())?;
    let out_dir = store.join("quotes");
    std::fs::create_dir_all(&out_dir).map_err(|source| EventLogError::Dir {
        path: out_dir.clone(),
        source,
    })?;
    let out = out_dir.join(format!("{:020}.json", seq.0));
    quotefile::write(&out, &q, events)?;
    Ok(out)
}

/// The nonce a config statement's quote carries: SHA-256 of the domain and the statement's
/// signed object bytes.
pub fn config_quote_nonce(statement_object: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CONFIG_QUOTE_DOMAIN);
    h.update(statement_object);
    h.finalize().into()
}

/// Measures the config root of `vm` into `pcr` (after the vmattest version), then quotes the
/// boot PCRs and `pcr` over the statement; writes the quote file to `out`.
pub fn bind_config(
    out: &Path,
    statement_object: &[u8],
    vm: &str,
    root: &Digest,
    pcr: u32,
) -> Result<(), EventLogError> {
    check_pcr(pcr)?;
    let wanted = vec![
        Event::new(pcr, "vmattest", env!("CARGO_PKG_VERSION").to_owned()),
        Event::new(pcr, "config-root", format!("{vm} {root}")),
    ];
    let (q, events) = measure_and_quote(pcr, wanted, &config_quote_nonce(statement_object))?;
    quotefile::write(out, &q, events)?;
    Ok(())
}

/// A quote for host attestation over a server's `nonce`: the boot PCRs and, with `pcr`
/// (16-23), that PCR with vmattest's version measured into it, and its events.
pub fn quote_host(
    pcr: Option<u32>,
    nonce: &[u8],
) -> Result<(vmattest_tpm::Quote, Vec<Event>), EventLogError> {
    match pcr {
        Some(pcr) => {
            check_pcr(pcr)?;
            let wanted = vec![Event::new(
                pcr,
                "vmattest",
                env!("CARGO_PKG_VERSION").to_owned(),
            )];
            measure_and_quote(pcr, wanted, nonce)
        }
        None => {
            let mut tpm = tpm::open()?;
            let q = tpm.quote(&BOOT_PCRS, nonce).map_err(TpmError::from)?;
            Ok((q, Vec::new()))
        }
    }
}

/// Extends `pcr` with the `wanted` events not yet in this boot's log, then quotes the boot PCRs
/// and `pcr` with `qualifying` as the nonce; returns the quote and `pcr`'s events.
fn measure_and_quote(
    pcr: u32,
    wanted: Vec<Event>,
    qualifying: &[u8],
) -> Result<(vmattest_tpm::Quote, Vec<Event>), EventLogError> {
    let path = log_path();
    let mut log = read_log(&path)?;
    let mut tpm = tpm::open()?;
    let current = tpm
        .pcr_read(PcrBank::Sha256, &[pcr])
        .map_err(TpmError::from)?
        .first()
        .copied()
        .unwrap_or_default();
    if replay(&log, pcr)? != current {
        if current != [0u8; 32] {
            return Err(EventLogError::Foreign {
                pcr,
                value: hex::encode(current),
                path,
            });
        }
        // PCR reset (a reboot): the old log describes a previous boot.
        log.retain(|e| e.pcr != pcr);
    }
    for e in wanted {
        if log.contains(&e) {
            continue;
        }
        let d = event_digest(&e.kind, &e.value);
        tpm.pcr_extend(pcr, &d).map_err(TpmError::from)?;
        log.push(e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| EventLogError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut text = String::new();
        for e in &log {
            // Serializing a struct of strings and integers cannot fail.
            text.push_str(&serde_json::to_string(e).unwrap_or_default());
            text.push('\n');
        }
        files::write_atomic(&path, text.as_bytes(), "event log")?;
    }
    let mut pcrs = BOOT_PCRS.to_vec();
    pcrs.push(pcr);
    let q = tpm.quote(&pcrs, qualifying).map_err(TpmError::from)?;
    let events: Vec<Event> = log.into_iter().filter(|e| e.pcr == pcr).collect();
    Ok((q, events))
}
