//! Live capture: the guest runs on while its RAM is read.
//!
//! In a short pause, each disk gets a copy-before-write backup job into a raw file and QEMU
//! starts a background snapshot (`background-snapshot`) into a socket this process reads.
//! QEMU write-protects guest RAM with userfaultfd, so every page reaches the stream with its
//! bytes of that instant even if the guest writes it meanwhile. The guest resumes once the
//! first page arrives (the protection is on by then). The pages go into a sparse image, the
//! other blocks (ROMs, video RAM) and the device state into a device-state stream, and the
//! usual take hashes and stores the image, the backups and the stream while the guest runs.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmattest_core::alg::is_zero;
use vmattest_core::chain::ComponentKind;
use vmattest_store::{ComponentInput, Hold};

use crate::capture::{
    Arm, CONFIG, CaptureError, CaptureReport, DEVICE_STATE, Job, RAM, io, tempfile_dir,
    write_private,
};
use crate::qmp::{Monitor, QmpError};
use crate::stream::{DeviceStream, PAGE_SIZE, Stream, StreamError};

/// Names of the jobs and block nodes a live capture adds; stale ones are removed first.
const PREFIX: &str = "vmattest-live-";
/// How long QEMU may take to connect and send the first page, and to finish the stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a disk's backup job may take after the stream is read.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(2);

/// A disk's backup: its job and target node, and the raw file that receives it.
struct Backup {
    disk: String,
    node: String,
    job: String,
    path: PathBuf,
}

/// What the stream reader hands back: the device-state stream and the RAM pages written.
type Read = Result<(Vec<u8>, u64), CaptureError>;

/// The live part of [`crate::capture::capture_target`]: migration settings are already those
/// of a background snapshot.
pub(crate) fn capture(
    job: &Job<'_>,
    mon: &mut dyn Monitor,
    arm: Option<Arm<'_>>,
) -> Result<CaptureReport, CaptureError> {
    let t = job.t;
    let work = tempfile_dir(&t.scratch_in)?;
    let mut backups = Vec::new();
    let result = run(job, mon, arm, &work, &mut backups);
    // Whatever happened, QEMU keeps no job or node of this capture.
    let cleaned = cleanup(mon, &backups);
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    cleaned.map_err(|source| CaptureError::Qmp {
        vm: t.name.to_owned(),
        source,
    })?;
    Ok(report)
}

fn run(
    job: &Job<'_>,
    mon: &mut dyn Monitor,
    arm: Option<Arm<'_>>,
    work: &Path,
    backups: &mut Vec<Backup>,
) -> Result<CaptureReport, CaptureError> {
    let Job {
        t,
        store,
        opts,
        was_running,
        fit,
    } = job;
    let was_running = *was_running;
    let vm = || t.name.to_owned();
    let qmp_err = |source| CaptureError::Qmp { vm: vm(), source };
    clear_stale(mon).map_err(qmp_err)?;

    // Everything that takes time is prepared while the guest runs.
    let ram_len = std::fs::metadata(&t.ram).map_err(io(&t.ram))?.len();
    let ram_img = work.join(RAM);
    let image = private_file(&ram_img, ram_len)?;
    for d in &t.disks {
        let size = virtual_size(mon, &d.name).map_err(qmp_err)?;
        let path = work.join(format!("{}.raw", d.name));
        private_file(&path, size)?;
        let node = format!("{PREFIX}{}", d.name);
        mon.execute(
            "blockdev-add",
            json!({
                "driver": "raw",
                "node-name": node,
                "file": { "driver": "file", "filename": path },
            }),
        )
        .map_err(qmp_err)?;
        backups.push(Backup {
            disk: d.name.clone(),
            job: format!("{PREFIX}{}", d.name),
            node,
            path,
        });
    }
    let sock_path = work.join("stream.sock");
    let sock = sock_path.clone();
    let listener = UnixListener::bind(&sock).map_err(io(&sock))?;
    listener.set_nonblocking(true).map_err(io(&sock))?;
    let (first_tx, first_rx) = mpsc::channel();
    let name = vm();
    let reader = std::thread::spawn(move || -> Read {
        let conn = accept(&listener, &sock)?;
        read_stream(conn, &image, ram_len, first_tx).map_err(|e| CaptureError::Vm {
            vm: name,
            detail: e.to_string(),
        })
    });

    let armed = match arm {
        Some(arm) if was_running => Some(arm()?),
        _ => None,
    };
    let t0 = Instant::now();
    let paused = pause(mon, was_running, backups, &sock_path, &first_rx);
    let snapshot_start = paused.as_ref().map_or(Duration::ZERO, |d| *d);
    let resumed = if was_running { resume(mon) } else { Ok(()) };
    let downtime = t0.elapsed();
    if let Some(armed) = armed {
        match resumed {
            Ok(()) => armed.disarm(),
            Err(_) => armed.abandon(),
        }
    }
    let started = paused.map(drop).map_err(qmp_err);
    let resumed = resumed.map_err(qmp_err);
    if started.is_err() {
        // A reader still waiting for QEMU gets an empty stream instead, and ends.
        let _ = UnixStream::connect(&sock_path);
    }
    let read = reader.join().unwrap_or_else(|_| {
        Err(CaptureError::Vm {
            vm: vm(),
            detail: "the stream reader panicked".into(),
        })
    });
    if started.is_err() || read.is_err() {
        cancel_migration(mon);
    }
    started?;
    resumed?;
    let t_measure = Instant::now();
    let (device, _pages) = read?;
    mon.wait_migration(STREAM_TIMEOUT).map_err(qmp_err)?;
    for b in backups.iter() {
        wait_job(mon, &b.job).map_err(|detail| CaptureError::Disk {
            vm: vm(),
            disk: b.disk.clone(),
            detail,
        })?;
    }
    let device_path = work.join(DEVICE_STATE);
    write_private(&device_path, &device)?;
    fit.pad(&device_path)?;
    let config = work.join(CONFIG);
    write_private(&config, &t.config)?;

    let mut inputs = vec![input(RAM, ComponentKind::Memory, ram_img)];
    for b in backups.iter() {
        inputs.push(input(&b.disk, ComponentKind::Disk, b.path.clone()));
    }
    inputs.push(input(DEVICE_STATE, ComponentKind::DeviceState, device_path));
    inputs.push(input(CONFIG, ComponentKind::Config, config));
    // The image and the backups are this capture's own files, which nothing writes now.
    let frozen = store.freeze(&inputs, opts.secret, Hold::UntilCommit)?;
    let measure = t_measure.elapsed();
    let t_commit = Instant::now();
    let summary = store.commit(frozen, opts)?;
    Ok(CaptureReport {
        mode: crate::capture::Mode::Live,
        summary,
        downtime,
        device_state: snapshot_start,
        measure,
        commit: t_commit.elapsed(),
        device_state_bytes: device.len() as u64,
    })
}

fn input(name: &str, kind: ComponentKind, path: PathBuf) -> ComponentInput {
    ComponentInput {
        name: name.into(),
        kind,
        path,
        dirty: None,
    }
}

/// The pause: the disks' backups and the snapshot start at the same instant, and the guest
/// stays stopped until QEMU protects its RAM (the first page is on its way). Returns how long
/// QEMU took from `migrate` to that first page.
fn pause(
    mon: &mut dyn Monitor,
    was_running: bool,
    backups: &[Backup],
    sock: &Path,
    first: &mpsc::Receiver<()>,
) -> Result<Duration, QmpError> {
    if was_running {
        mon.stop()?;
    }
    if !backups.is_empty() {
        let actions: Vec<Value> = backups
            .iter()
            .map(|b| {
                json!({
                    "type": "blockdev-backup",
                    "data": {
                        "job-id": b.job,
                        "device": b.disk,
                        "target": b.node,
                        "sync": "full",
                        "auto-dismiss": false,
                    },
                })
            })
            .collect();
        mon.execute("transaction", json!({ "actions": actions }))?;
    }
    let path = sock
        .to_str()
        .ok_or_else(|| QmpError::Protocol(format!("{}: not UTF-8", sock.display())))?;
    let t = Instant::now();
    mon.execute(
        "migrate",
        json!({ "channels": [{
            "channel-type": "main",
            "addr": { "transport": "socket", "type": "unix", "path": path },
        }] }),
    )?;
    if was_running {
        // Sent once the protection is on; a reader that failed drops the sender instead.
        let _ = first.recv_timeout(STREAM_TIMEOUT);
    }
    Ok(t.elapsed())
}

/// Stops a migration that lost its reader and waits (briefly) for it to end, so that the
/// settings can be set back.
fn cancel_migration(mon: &mut dyn Monitor) {
    let _ = mon.execute("migrate_cancel", Value::Null);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let status = mon.execute("query-migrate", Value::Null).ok();
        let status = status
            .as_ref()
            .and_then(|i| i.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("none");
        if matches!(status, "none" | "completed" | "failed" | "cancelled") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resumes the guest. QEMU resumes it too, to the state it found (paused), from a bottom half
/// that may run just after `cont`; the status is checked and `cont` repeated if so.
fn resume(mon: &mut dyn Monitor) -> Result<(), QmpError> {
    mon.cont()?;
    if mon.query_status()? != "running" {
        mon.cont()?;
    }
    Ok(())
}

/// Waits for QEMU to connect; it does so at `migrate`, or the capture failed.
fn accept(listener: &UnixListener, sock: &Path) -> Result<UnixStream, CaptureError> {
    let deadline = Instant::now() + STREAM_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).map_err(io(sock))?;
                conn.set_read_timeout(Some(STREAM_TIMEOUT))
                    .map_err(io(sock))?;
                return Ok(conn);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io(sock)(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "QEMU did not connect",
                    )));
                }
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(io(sock)(e)),
        }
    }
}

/// Reads the stream: guest RAM's pages into `image` (zero pages stay holes), the rest into a
/// device-state stream. `first` hears of the first page.
fn read_stream(
    conn: impl std::io::Read,
    image: &File,
    ram_len: u64,
    first: mpsc::Sender<()>,
) -> Result<(Vec<u8>, u64), LiveError> {
    let mut s = Stream::open(BufReader::with_capacity(1 << 20, conn))?;
    let mains: Vec<usize> = (0..s.blocks().len())
        .filter(|&i| s.blocks()[i].len == ram_len)
        .collect();
    let [main] = mains[..] else {
        return Err(LiveError::Ram {
            found: mains.len(),
            len: ram_len,
        });
    };
    let mut device = DeviceStream::new(&s, main)?;
    let mut first = Some(first);
    let mut pages = 0u64;
    let throttle = throttle();
    while let Some(p) = s.next_page()? {
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        if let Some(pause) = throttle
            && p.index % 256 == 0
        {
            std::thread::sleep(pause);
        }
        if p.block != main {
            device.page(&p);
            continue;
        }
        if !is_zero(&p.data[..]) {
            let at = p.index * PAGE_SIZE as u64;
            image
                .write_all_at(&p.data[..], at)
                .map_err(LiveError::Write)?;
            pages += 1;
        }
    }
    let tail = s.device_state()?;
    Ok((device.finish(&tail), pages))
}

/// Test hook, only with the `fault-injection` feature: `VMATTEST_LIVE_THROTTLE_MS=N` makes the
/// reader sleep N ms per MiB of RAM, so that the guest runs (and writes) for a while during
/// the capture.
#[cfg(feature = "fault-injection")]
fn throttle() -> Option<Duration> {
    let ms = std::env::var("VMATTEST_LIVE_THROTTLE_MS").ok()?;
    ms.parse().ok().map(Duration::from_millis)
}

#[cfg(not(feature = "fault-injection"))]
fn throttle() -> Option<Duration> {
    None
}

#[derive(Debug, thiserror::Error)]
enum LiveError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(
        "migration stream: expected one RAM block of {len} bytes (the RAM file's), found {found}"
    )]
    Ram { found: usize, len: u64 },
    #[error("writing the RAM image: {0}")]
    Write(std::io::Error),
}

/// A new 0600 file of `len` bytes, all a hole.
fn private_file(path: &Path, len: u64) -> Result<File, CaptureError> {
    let f = crate::private::create(path, true).map_err(io(path))?;
    f.set_len(len).map_err(io(path))?;
    Ok(f)
}

/// The size the guest sees of the disk whose format node is `node`.
fn virtual_size(mon: &mut dyn Monitor, node: &str) -> Result<u64, QmpError> {
    let nodes = mon.execute("query-named-block-nodes", json!({ "flat": true }))?;
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n.get("node-name").and_then(Value::as_str) == Some(node))
        .and_then(|n| n.pointer("/image/virtual-size").and_then(Value::as_u64))
        .ok_or_else(|| QmpError::Protocol(format!("block node {node}: no virtual size")))
}

/// Polls a backup job until it concludes; its error, if any, is the detail.
fn wait_job(mon: &mut dyn Monitor, job: &str) -> Result<(), String> {
    let deadline = Instant::now() + BACKUP_TIMEOUT;
    loop {
        let jobs = mon
            .execute("query-jobs", Value::Null)
            .map_err(|e| e.to_string())?;
        let this = jobs
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j.get("id").and_then(Value::as_str) == Some(job))
            .cloned()
            .ok_or_else(|| format!("backup job {job}: gone"))?;
        if this.get("status").and_then(Value::as_str) == Some("concluded") {
            return match this.get("error").and_then(Value::as_str) {
                None => Ok(()),
                Some(e) => Err(format!("backup job {job}: {e}")),
            };
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "backup job {job}: not done after {BACKUP_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Cancels and dismisses this capture's jobs and deletes its nodes.
fn cleanup(mon: &mut dyn Monitor, backups: &[Backup]) -> Result<(), QmpError> {
    let jobs: Vec<String> = backups.iter().map(|b| b.job.clone()).collect();
    let nodes: Vec<String> = backups.iter().map(|b| b.node.clone()).collect();
    remove(mon, &jobs, &nodes)
}

/// Jobs and nodes a capture that died left behind.
fn clear_stale(mon: &mut dyn Monitor) -> Result<(), QmpError> {
    let named = |v: &Value, key: &str| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| j.get(key).and_then(Value::as_str))
            .filter(|n| n.starts_with(PREFIX))
            .map(str::to_owned)
            .collect()
    };
    let jobs = named(&mon.execute("query-jobs", Value::Null)?, "id");
    let nodes = named(
        &mon.execute("query-named-block-nodes", json!({ "flat": true }))?,
        "node-name",
    );
    remove(mon, &jobs, &nodes)
}

fn remove(mon: &mut dyn Monitor, jobs: &[String], nodes: &[String]) -> Result<(), QmpError> {
    for job in jobs {
        // A job still running is cancelled first; one that concluded only needs dismissing.
        let _ = mon.execute("job-cancel", json!({ "id": job }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while mon.execute("job-dismiss", json!({ "id": job })).is_err() {
            let listed = mon.execute("query-jobs", Value::Null)?;
            let present = listed
                .as_array()
                .into_iter()
                .flatten()
                .any(|j| j.get("id").and_then(Value::as_str) == Some(job.as_str()));
            if !present || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for node in nodes {
        let listed = mon.execute("query-named-block-nodes", json!({ "flat": true }))?;
        let present = listed
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n.get("node-name").and_then(Value::as_str) == Some(node.as_str()));
        if present {
            mon.execute("blockdev-del", json!({ "node-name": node }))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

    use super::*;

    fn seed() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/seeds/qemu_stream/background-snapshot"
        );
        std::fs::read(path).unwrap()
    }

    /// Guest RAM's pages go to the image at their offsets (zero pages stay holes); the BIOS
    /// block and the device state go to the device-state stream.
    #[test]
    fn the_reader_splits_guest_ram_from_the_device_state() {
        let dir = tempfile::tempdir().unwrap();
        let image = private_file(&dir.path().join("ram"), 8192).unwrap();
        let (tx, rx) = mpsc::channel();
        let (device, pages) = read_stream(&seed()[..], &image, 8192, tx).unwrap();
        assert_eq!(pages, 1);
        assert!(rx.try_recv().is_ok(), "the first page was announced");
        let ram = std::fs::read(dir.path().join("ram")).unwrap();
        let page1: Vec<u8> = (0..PAGE_SIZE).map(|i| 1 ^ (i as u8)).collect();
        assert_eq!(&ram[..PAGE_SIZE], &page1[..]);
        assert!(ram[PAGE_SIZE..].iter().all(|b| *b == 0));
        assert!(device.ends_with(b"device state\x00"));
        let mut s = Stream::open(&device[..]).unwrap();
        let bios = s.blocks().iter().position(|b| b.name == "pc.bios");
        let p = s.next_page().unwrap().unwrap();
        assert_eq!((Some(p.block), p.index), (bios, 0));
    }

    #[test]
    fn a_stream_without_exactly_one_block_of_the_ram_files_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let image = private_file(&dir.path().join("ram"), 1 << 20).unwrap();
        let (tx, _rx) = mpsc::channel();
        let e = read_stream(&seed()[..], &image, 1 << 20, tx).unwrap_err();
        assert_eq!(
            e.to_string(),
            "migration stream: expected one RAM block of 1048576 bytes (the RAM file's), found 0"
        );
    }
}
