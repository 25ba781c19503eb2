//! What the daemon last did for each VM, kept in memory and written to `STATE/status.json`
//! (0600, atomically) at most every supervisor tick (0.5 s) after a change, for
//! `vmattest host status` and monitoring.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use vmattest_core::record::UnixTime;

pub const STATUS_FILE: &str = "status.json";
/// A status file is small; anything larger is refused unread.
const MAX_STATUS_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attested {
    #[serde(with = "vmattest_api::time")]
    pub time: UnixTime,
    pub result_id: i64,
    pub score: u8,
    pub status: String,
    pub alert: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshotted {
    #[serde(with = "vmattest_api::time")]
    pub time: UnixTime,
    pub seq: u64,
    pub downtime_ms: u64,
    pub changed_pages: u64,
}

/// A retention prune that folded seqs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pruned {
    #[serde(with = "vmattest_api::time")]
    pub time: UnixTime,
    /// The chain's first seq after it.
    pub base: u64,
    pub folded: u64,
    pub removed_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failure {
    #[serde(with = "vmattest_api::time")]
    pub time: UnixTime,
    /// `attest`, `snapshot`, `prune`, `rollback`, `report` or `start`.
    pub what: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmStatus {
    pub name: String,
    /// `spec PATH` or `domain NAME`.
    pub guest: String,
    pub rounds: u64,
    pub snapshots: u64,
    pub last_attestation: Option<Attested>,
    pub last_snapshot: Option<Snapshotted>,
    #[serde(default)]
    pub last_prune: Option<Pruned>,
    pub last_rollback_seq: Option<u64>,
    pub last_error: Option<Failure>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusFile {
    pub pid: u32,
    pub config: PathBuf,
    #[serde(with = "vmattest_api::time")]
    pub updated: UnixTime,
    /// Set when the daemon stopped cleanly.
    pub stopped: bool,
    pub vms: Vec<VmStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Read(#[from] vmattest_host::files::FileError),
    #[error("{}: {detail}", path.display())]
    Decode { path: PathBuf, detail: String },
}

#[derive(Debug)]
pub struct Board {
    dir: PathBuf,
    config: PathBuf,
    vms: Mutex<BTreeMap<String, VmStatus>>,
    /// Set by every change; the supervisor writes the file when it is set ([`Board::flush`]),
    /// so that a hundred VMs' rounds cost one write a tick, not one each.
    dirty: AtomicBool,
}

impl Board {
    /// Starts from the file an earlier run left, so that counts and last events carry over.
    pub fn new(dir: &Path, config: &Path) -> Board {
        let vms = read(dir)
            .map(|f| f.vms.into_iter().map(|v| (v.name.clone(), v)).collect())
            .unwrap_or_default();
        Board {
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
            vms: Mutex::new(vms),
            dirty: AtomicBool::new(true),
        }
    }

    /// Applies `f` to the VM's entry.
    pub fn update(&self, name: &str, guest: &str, f: impl FnOnce(&mut VmStatus)) {
        let Ok(mut vms) = self.vms.lock() else { return };
        let e = vms.entry(name.to_owned()).or_default();
        e.name = name.to_owned();
        e.guest = guest.to_owned();
        f(e);
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Keeps only the VMs still configured.
    pub fn retain(&self, names: &[String]) {
        let Ok(mut vms) = self.vms.lock() else { return };
        vms.retain(|n, _| names.contains(n));
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Writes the file if anything changed since the last write.
    pub fn flush(&self) {
        if self.dirty.swap(false, Ordering::SeqCst) {
            self.write(false);
        }
    }

    /// Writes the file, marked as a clean stop.
    pub fn stopped(&self) {
        self.write(true);
    }

    fn write(&self, stopped: bool) {
        let vms = match self.vms.lock() {
            Ok(vms) => vms.values().cloned().collect(),
            Err(_) => return,
        };
        let file = StatusFile {
            pid: std::process::id(),
            config: self.config.clone(),
            updated: vmattest_host::now(),
            stopped,
            vms,
        };
        let path = self.dir.join(STATUS_FILE);
        let result = serde_json::to_vec_pretty(&file)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                vmattest_host::files::write_private(&path, &bytes, "status file")
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "status file not written");
        }
    }
}

/// The status file in `dir`.
pub fn read(dir: &Path) -> Result<StatusFile, StatusError> {
    let path = dir.join(STATUS_FILE);
    let bytes = vmattest_host::files::read_capped(&path, MAX_STATUS_BYTES, "hostd status file")?;
    serde_json::from_slice(&bytes).map_err(|e| StatusError::Decode {
        path: path.clone(),
        detail: e.to_string(),
    })
}
