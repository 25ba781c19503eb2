//! Binding a link to the host's measured state: vmattest's version, the hypervisor binary and
//! the VM config are measured into a PCR (with an event log a verifier replays), and the TPM
//! quotes the boot PCRs and that PCR over the new link's digest (docs/FORMAT.md).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use vmattest_core::alg::Digest;
use vmattest_core::chain::{ComponentKind, ComponentRoot, SeqNo};
use vmattest_tpm::PcrBank;

use super::write_atomic;

/// Boot-time PCRs quoted with the bound PCR (firmware, boot loader, kernel).
pub const BOOT_PCRS: [u32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
/// Largest event log read.
const MAX_LOG: u64 = 1 << 20;

/// One measurement: `digest = SHA-256("vmattest event v1\0" || kind || "\0" || value)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub pcr: u32,
    pub kind: String,
    pub value: String,
    pub digest: String,
}

impl Event {
    fn new(pcr: u32, kind: &str, value: String) -> Event {
        let digest = hex::encode(event_digest(kind, &value));
        Event {
            pcr,
            kind: kind.into(),
            value,
            digest,
        }
    }
}

pub fn event_digest(kind: &str, value: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"vmattest event v1\0");
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    h.finalize().into()
}

/// The value a SHA-256 PCR reaches from zeros after extending with `events` of that PCR.
pub fn replay(events: &[Event], pcr: u32) -> anyhow::Result<[u8; 32]> {
    let mut v = [0u8; 32];
    for e in events.iter().filter(|e| e.pcr == pcr) {
        let d = hex::decode(&e.digest).context("event digest is not hex")?;
        if d != event_digest(&e.kind, &e.value) {
            bail!("event {} {:?}: digest does not match", e.kind, e.value);
        }
        let mut h = Sha256::new();
        h.update(v);
        h.update(&d);
        v = h.finalize().into();
    }
    Ok(v)
}

/// The host's event log: `$VMATTEST_EVENT_LOG`, else under the user's state directory.
fn log_path() -> PathBuf {
    if let Some(p) = std::env::var_os("VMATTEST_EVENT_LOG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("vmattest").join("pcr-events.jsonl")
}

fn read_log(path: &Path) -> anyhow::Result<Vec<Event>> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(Vec::new());
    };
    if meta.len() > MAX_LOG {
        bail!(
            "event log {}: {} bytes, expected at most {MAX_LOG}",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("event log {} line {}", path.display(), i + 1))
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

/// Measures what is not yet measured into `pcr` since boot, then quotes the boot PCRs and
/// `pcr` over `link`; writes the quote (with the PCR's events) to STORE/quotes/SEQ.json.
pub fn bind(
    store: &Path,
    seq: SeqNo,
    link: &Digest,
    components: &[ComponentRoot],
    hypervisor: Option<&Path>,
    pcr: u32,
) -> anyhow::Result<PathBuf> {
    check_pcr(pcr)?;
    let mut wanted = vec![Event::new(
        pcr,
        "vmattest",
        env!("CARGO_PKG_VERSION").to_owned(),
    )];
    if let Some(h) = hypervisor {
        let bytes = std::fs::read(h).with_context(|| format!("hypervisor {}", h.display()))?;
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
    std::fs::create_dir_all(&out_dir).with_context(|| format!("{}", out_dir.display()))?;
    let out = out_dir.join(format!("{:020}.json", seq.0));
    super::tpm::write_quote(&out, &q, events)?;
    Ok(out)
}

/// Extends `pcr` with the `wanted` events not yet in this boot's log, then quotes the boot PCRs
/// and `pcr` with `qualifying` as the nonce; returns the quote and `pcr`'s events.
fn measure_and_quote(
    pcr: u32,
    wanted: Vec<Event>,
    qualifying: &[u8],
) -> anyhow::Result<(vmattest_tpm::Quote, Vec<Event>)> {
    let path = log_path();
    let mut log = read_log(&path)?;
    let mut tpm = super::tpm::open()?;
    let current = tpm
        .pcr_read(PcrBank::Sha256, &[pcr])?
        .first()
        .copied()
        .unwrap_or_default();
    if replay(&log, pcr)? != current {
        if current != [0u8; 32] {
            bail!(
                "PCR {pcr} is {}, but event log {} replays to another value: something else extends PCR {pcr}",
                hex::encode(current),
                path.display()
            );
        }
        // PCR reset (a reboot): the old log describes a previous boot.
        log.retain(|e| e.pcr != pcr);
    }
    for e in wanted {
        if log.contains(&e) {
            continue;
        }
        let d = event_digest(&e.kind, &e.value);
        tpm.pcr_extend(pcr, &d)?;
        log.push(e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        }
        let mut text = String::new();
        for e in &log {
            text.push_str(&serde_json::to_string(e)?);
            text.push('\n');
        }
        write_atomic(&path, text.as_bytes())?;
    }
    let mut pcrs = BOOT_PCRS.to_vec();
    pcrs.push(pcr);
    let q = tpm.quote(&pcrs, qualifying)?;
    let events: Vec<Event> = log.into_iter().filter(|e| e.pcr == pcr).collect();
    Ok((q, events))
}

fn check_pcr(pcr: u32) -> anyhow::Result<()> {
    if !(16..=23).contains(&pcr) {
        bail!("--bind-pcr {pcr}: expected 16 to 23 (PCRs 0-15 belong to the boot chain)");
    }
    Ok(())
}

/// Domain of the qualifying data of a config statement's quote.
pub const CONFIG_QUOTE_DOMAIN: &[u8] = b"vmattest config-quote v1\0";

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
) -> anyhow::Result<()> {
    check_pcr(pcr)?;
    let wanted = vec![
        Event::new(pcr, "vmattest", env!("CARGO_PKG_VERSION").to_owned()),
        Event::new(pcr, "config-root", format!("{vm} {root}")),
    ];
    let (q, events) = measure_and_quote(pcr, wanted, &config_quote_nonce(statement_object))?;
    super::tpm::write_quote(out, &q, events)
}
