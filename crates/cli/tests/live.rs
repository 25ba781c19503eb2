//! Live capture (`snapshot take --vm --live`) of real QEMU guests (TCG) whose RAM is on
//! /dev/shm: the same roots as a paused capture of the same instant, and a guest that writes
//! memory and disk during the capture restores to the capture's instant.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;

use common::guest::Guest;
use common::*;

/// A private directory on shared memory, where userfaultfd can write-protect guest RAM.
fn shm(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/dev/shm")
        .unwrap()
}

/// Runs one QMP command on the guest's monitor, as an operator's tool would.
fn qmp(g: &Guest, cmd: &str) {
    let mut s = UnixStream::connect(g.dir.join("qmp.sock")).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut answer = |s: &mut UnixStream, line: &str| {
        writeln!(s, "{line}").unwrap();
        loop {
            let mut reply = String::new();
            assert!(r.read_line(&mut reply).unwrap() > 0, "QMP closed");
            if reply.contains("\"return\"") {
                return;
            }
            assert!(!reply.contains("\"error\""), "{cmd}: {reply}");
        }
    };
    answer(&mut s, r#"{"execute":"qmp_capabilities"}"#);
    answer(&mut s, &format!(r#"{{"execute":"{cmd}"}}"#));
}

/// `snapshot take --vm` of `g` into `store`, live or paused.
fn take_args<'a>(store: &'a Path, key: &'a Path, g: &'a Guest, live: bool) -> Vec<&'a str> {
    let mut args = vec![
        "snapshot",
        "take",
        "--store",
        s(store),
        "--vm",
        g.arg(),
        "--key",
        s(key),
    ];
    if live {
        args.push("--live");
    }
    args
}

fn take(store: &Path, key: &Path, g: &Guest, live: bool) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend(take_args(store, key, g, live));
    vmattest(args).ok().json()
}

fn roots(j: &serde_json::Value) -> Vec<(String, String)> {
    j["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["root"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn live_and_paused_captures_of_the_same_instant_give_the_same_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = shm("vmattest-live-same");
    let g = Guest::with_run_dir(dir, "live-same", "fill=16", &run.path().join("run"));
    g.start();
    g.next_tick(None);
    qmp(&g, "stop");
    let ram = std::fs::read(g.dir.join("ram")).unwrap();

    let live = chain(dir, "live-same");
    let j_live = take(&live.store, &live.key, &g, true);
    assert_eq!(j_live["mode"], "live");
    let paused_store = dir.join("store-paused");
    vmattest([
        "snapshot",
        "init",
        "--store",
        s(&paused_store),
        "--vm-id",
        "live-same",
    ])
    .ok();
    let j_paused = take(&paused_store, &live.key, &g, false);
    assert_eq!(j_paused["mode"], "paused");

    // RAM, disk and config hold the same bytes; only the device state's framing differs
    // (a background snapshot's stream against one that leaves shared RAM out).
    let (l, p) = (roots(&j_live), roots(&j_paused));
    let names: Vec<&str> = l.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ram", "disk0", "device-state", "config"]);
    for (a, b) in l.iter().zip(&p) {
        if a.0 != "device-state" {
            assert_eq!(a, b, "component {}", a.0);
        }
    }
    // The oracle: the live chain's RAM is the paused guest's RAM file, byte for byte.
    let out = dir.join("restored");
    let mut args = live.restore_args(0);
    args.extend(["--out".to_owned(), s(&out).to_owned()]);
    vmattest(args).ok();
    let copy = dir.join("ram.copy");
    std::fs::write(&copy, &ram).unwrap();
    assert_eq!(b3sum(&out.join("ram")), b3sum(&copy));
    // A chain may change mode: the device state is padded to the chain's length.
    for (store, in_live_mode) in [(&live.store, false), (&paused_store, true)] {
        let j = take(store, &live.key, &g, in_live_mode);
        assert_eq!(j["seq"], 1);
        vmattest([
            "snapshot",
            "verify",
            "--store",
            s(store),
            "--pubkey",
            s(&live.pubkey),
        ])
        .ok();
    }
    // QEMU set the guest back as it found it: paused, and the capture left it so.
    assert_eq!(
        vmattest(["--json", "vm", "status", "--vm", g.arg()])
            .ok()
            .json()["state"],
        "paused"
    );
    qmp(&g, "cont");
    g.next_tick(g.ticks().last().copied());
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the reader's throttle hook: --features vmattest-cli/fault-injection"
)]
fn a_guest_writing_memory_during_a_live_capture_restores_to_the_capture_instant() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = shm("vmattest-live-write");
    // 4 MiB of its RAM rewritten every tick, and a disk block written every tick.
    let g = Guest::with_run_dir(
        dir,
        "live-write",
        "fill=48 snapdirty=4096",
        &run.path().join("run"),
    );
    let c = chain(dir, "live-write");
    g.start();
    let mut captured = Vec::new();
    for seq in 0..2u64 {
        let before = g.next_tick(g.ticks().last().copied());
        // The reader slows down, so the guest runs on (and writes) for seconds meanwhile.
        let mut args = vec!["--json"];
        args.extend(take_args(&c.store, &c.key, &g, true));
        let j = vmattest_env(&args, &[("VMATTEST_LIVE_THROTTLE_MS", "60")])
            .ok()
            .json();
        let after = g.ticks().last().copied().unwrap();
        assert!(
            after >= before + 2,
            "the guest should tick during the capture: ticks {before}..{after}"
        );
        check_capture(&j, seq, &["ram", "disk0", "device-state", "config"]);
        assert_eq!(j["mode"], "live");
        let disk = c.component_at(seq, "disk0", dir);
        let newest = newest_block(&disk);
        assert!(
            (before..=after + 1).contains(&newest),
            "seq {seq}: disk holds tick {newest}, the capture ran from tick {before} to {after}"
        );
        eprintln!(
            "seq {seq}: downtime {} ms, ticks {before}..{after}, disk at {newest}",
            j["downtime_ms"]
        );
        captured.push(newest);
    }
    vmattest([
        "snapshot",
        "verify",
        "--store",
        s(&c.store),
        "--pubkey",
        s(&c.pubkey),
    ])
    .ok();
    // Each seq restores to its instant: the guest's counter (in RAM) continues from the tick
    // whose block the disk holds, so RAM and disk are of one instant.
    for seq in [0u64, 1] {
        let mut args = vec!["--json".to_owned()];
        args.extend(c.restore_args(seq));
        args.extend(["--vm".to_owned(), g.arg().to_owned()]);
        vmattest(args).ok();
        let tick = captured[seq as usize];
        g.next_tick(None);
        let first = g.ticks().first().copied();
        assert!(
            first == Some(tick) || first == Some(tick + 1),
            "seq {seq}: restored guest should continue at tick {tick} or {}, not {first:?}",
            tick + 1
        );
    }
}

#[test]
fn live_capture_of_ram_on_a_disk_file_system_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = Guest::new(dir, "live-disk");
    let c = chain(dir, "live-disk");
    g.start();
    let r = vmattest(take_args(&c.store, &c.key, &g, true)).fails(2, "shared memory");
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    // Nothing was stored, and the guest runs on.
    let log = vmattest(["snapshot", "log", "--store", s(&c.store)]).ok();
    assert_eq!(log.stdout.trim(), "", "no link");
    g.next_tick(g.ticks().last().copied());
    // A paused capture still works: the settings were set back.
    let j = take(&c.store, &c.key, &g, false);
    check_capture(&j, 0, &["ram", "disk0", "device-state", "config"]);
}
