//! `vmattest hostd`: one process per host that keeps every configured VM attested and
//! snapshotted. A supervisor runs one worker thread per VM (module `worker`), reloads the
//! config on SIGHUP (starting, stopping and restarting only the workers whose VM changed),
//! rescans libvirt for domains a selector matches, and on SIGTERM or SIGINT lets each worker
//! finish what it is doing (a capture included) before it exits, every guest left running.

pub mod config;
pub mod status;
mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmattest_core::class::{Classify, ErrorClass};

pub use config::{Config, ConfigError};
use status::Board;
use worker::Shared;

/// How often selectors are matched against libvirt's domains again, and workers that ended
/// (a spec that could not be read, say) are started again.
const RESCAN: Duration = Duration::from_secs(30);
/// The status file is rewritten at most this often.
const STATUS_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum HostdError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("state directory {}: {detail}", path.display())]
    StateDir { path: PathBuf, detail: String },
    #[error("evidence key: {0}")]
    Signer(String),
    #[error("server: {0}")]
    Connect(String),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

impl Classify for HostdError {
    fn class(&self) -> ErrorClass {
        match self {
            HostdError::Config(_) | HostdError::Signer(_) | HostdError::Connect(_) => {
                ErrorClass::Input
            }
            HostdError::StateDir { .. } | HostdError::Signals(_) => ErrorClass::Environment,
        }
    }
}

struct Worker {
    fingerprint: [u8; 32],
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

fn state_dir(dir: &Path) -> Result<(), HostdError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let err = |detail: String| HostdError::StateDir {
        path: dir.to_path_buf(),
        detail,
    };
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => Err(err(
            "expected a directory, not a symbolic link or file".into(),
        )),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| err(e.to_string()))
        }
        Ok(_) => Ok(()),
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err(e.to_string())),
    }
}

fn make_shared(c: &Config, board: Arc<Board>) -> Result<Shared, HostdError> {
    let client = vmattest_client::Client::connect(&vmattest_client::Connect {
        server: Some(&c.server.url),
        token_file: Some(&c.server.token_file),
        ca_cert: c.server.ca_cert.as_deref(),
    })
    .map_err(|e| HostdError::Connect(e.to_string()))?;
    let choice = match &c.evidence.key {
        Some(k) => vmattest_host::keys::SignerChoice::KeyFile(k.clone()),
        None => vmattest_host::keys::SignerChoice::Tpm,
    };
    let evidence =
        vmattest_host::keys::signer(&choice).map_err(|e| HostdError::Signer(e.to_string()))?;
    Ok(Shared {
        client,
        evidence: Arc::from(evidence),
        board,
        rounds: worker::Permits::new(c.server.concurrency),
    })
}

/// Every libvirt connection's domain names, one lookup per URI per scan.
fn domain_names(uri: Option<&str>) -> Result<Vec<String>, String> {
    vmattest_libvirt::Connection::open(uri)
        .and_then(|c| c.domain_names())
        .map_err(|e| e.to_string())
}

fn stop_all(workers: &mut BTreeMap<String, Worker>, which: impl Fn(&str, &Worker) -> bool) {
    let names: Vec<String> = workers
        .iter()
        .filter(|(n, w)| which(n, w))
        .map(|(n, _)| n.clone())
        .collect();
    for n in &names {
        if let Some(w) = workers.get(n) {
            w.stop.store(true, Ordering::SeqCst);
        }
    }
    // Stopped together, joined after: captures in flight finish side by side.
    for n in names {
        if let Some(w) = workers.remove(&n)
            && w.handle.join().is_err()
        {
            tracing::error!(vm = %n, "worker panicked");
        }
    }
}

/// Starts, stops and restarts workers so that exactly the config's VMs run.
fn reconcile(c: &Config, shared: &Arc<Shared>, workers: &mut BTreeMap<String, Worker>) {
    let before: Vec<String> = workers.keys().cloned().collect();
    let mut cache: BTreeMap<Option<String>, Result<Vec<String>, String>> = BTreeMap::new();
    let (targets, errors) = c.expand(&mut |uri| {
        cache
            .entry(uri.map(str::to_owned))
            .or_insert_with(|| domain_names(uri))
            .clone()
    });
    for e in errors {
        tracing::warn!(error = %e, "selector");
    }
    let wanted: BTreeMap<String, ([u8; 32], config::Target)> = targets
        .into_iter()
        .map(|t| (t.name.clone(), (t.fingerprint(), t)))
        .collect();
    stop_all(workers, |name, w| {
        w.handle.is_finished() || wanted.get(name).is_none_or(|(f, _)| *f != w.fingerprint)
    });
    for (name, (fingerprint, target)) in wanted {
        if workers.contains_key(&name) {
            continue;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(shared), Arc::clone(&stop));
        let spawned = std::thread::Builder::new()
            .name(format!("vm-{name}"))
            .spawn(move || worker::run(&target, &s, &st));
        match spawned {
            Ok(handle) => {
                workers.insert(
                    name,
                    Worker {
                        fingerprint,
                        stop,
                        handle,
                    },
                );
            }
            Err(e) => tracing::error!(vm = %name, error = %e, "cannot start a worker thread"),
        }
    }
    let names: Vec<String> = workers.keys().cloned().collect();
    shared.board.retain(&names);
    if names != before {
        tracing::info!(vms = ?names, "VMs under attestation");
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> Result<(), HostdError> {
    let mut config = Config::load(config_path)?;
    state_dir(&config.state_dir)?;
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [
        (signal_hook::consts::SIGTERM, &stop),
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGHUP, &reload),
    ] {
        signal_hook::flag::register(sig, Arc::clone(flag)).map_err(HostdError::Signals)?;
    }
    let board = Arc::new(Board::new(&config.state_dir, config_path));
    let mut shared = Arc::new(make_shared(&config, Arc::clone(&board))?);
    let mut workers = BTreeMap::new();
    tracing::info!(config = %config_path.display(), pid = std::process::id(), "hostd started");
    reconcile(&config, &shared, &mut workers);
    let mut scanned = Instant::now();
    let mut flushed = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if flushed.elapsed() >= STATUS_EVERY {
            shared.board.flush();
            flushed = Instant::now();
        }
        if reload.swap(false, Ordering::SeqCst) {
            match Config::load(config_path) {
                Ok(new) => {
                    tracing::info!(config = %config_path.display(), "config reloaded");
                    if new.server != config.server
                        || new.evidence != config.evidence
                        || new.state_dir != config.state_dir
                    {
                        // Every worker uses the server and key: all restart with the new ones.
                        match state_dir(&new.state_dir).and_then(|()| {
                            make_shared(&new, Arc::new(Board::new(&new.state_dir, config_path)))
                        }) {
                            Ok(s) => {
                                stop_all(&mut workers, |_, _| true);
                                shared.board.flush();
                                shared = Arc::new(s);
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "config not applied; the old one runs on");
                                continue;
                            }
                        }
                    }
                    config = new;
                    reconcile(&config, &shared, &mut workers);
                }
                Err(e) => tracing::error!(error = %e, "config not reloaded; the old one runs on"),
            }
            scanned = Instant::now();
        } else if scanned.elapsed() >= RESCAN {
            reconcile(&config, &shared, &mut workers);
            scanned = Instant::now();
        }
    }
    tracing::info!("stopping: each worker finishes what it is doing");
    stop_all(&mut workers, |_, _| true);
    shared.board.stopped();
    tracing::info!("hostd stopped");
    Ok(())
}
