//! `vmattest snapshot prune` end to end: kept seqs restore to the bytes they captured (checked
//! with b3sum), kill -9 and injected crashes at any point lose nothing, bad arguments are
//! refused on one line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

struct Chain {
    dir: tempfile::TempDir,
    store: PathBuf,
    key: PathBuf,
    public: PathBuf,
    /// b3sum of the memory image each seq captured.
    sums: Vec<String>,
    mem: Vec<u8>,
}

impl Chain {
    fn new(seqs: u64, size: usize) -> Chain {
        Chain::with_init(seqs, size, "")
    }

    /// [`Chain::new`] with `init` added to `snapshot init`.
    fn with_init(seqs: u64, size: usize, init: &str) -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        cli(&format!("keygen --alg ed25519 --out {}", s(&key))).ok();
        let store = dir.path().join("store");
        cli(&format!(
            "snapshot init --json --store {} --vm-id vm-prune {init}",
            s(&store)
        ))
        .ok();
        let mut c = Chain {
            public: dir.path().join("k.key.pub"),
            mem: vm_like(size, 11),
            dir,
            store,
            key,
            sums: Vec::new(),
        };
        for i in 0..seqs {
            c.take(i);
        }
        c
    }

    fn take(&mut self, seed: u64) -> serde_json::Value {
        self.take_with(seed, "")
    }

    /// [`Chain::take`] with `extra` added to `snapshot take`; returns its JSON.
    fn take_with(&mut self, seed: u64, extra: &str) -> serde_json::Value {
        for p in 0..64usize {
            let at = (p * 7919 + seed as usize * 104_729) % (self.mem.len() / PAGE) * PAGE;
            self.mem[at..at + 64].fill(seed as u8 ^ p as u8);
        }
        let path = write(self.dir.path(), "mem.img", &self.mem);
        let j = cli(&format!(
            "snapshot take --json --store {} --key {} --memory mem={} {extra}",
            s(&self.store),
            s(&self.key),
            s(&path)
        ))
        .ok()
        .json();
        self.sums.push(b3sum(&path));
        j
    }

    fn prune_line(&self, args: &str) -> String {
        format!(
            "snapshot prune --json --store {} --pubkey {} --key {} {args}",
            s(&self.store),
            s(&self.public),
            s(&self.key)
        )
    }

    fn head_and_base(&self) -> (u64, u64) {
        let v = cli(&format!(
            "snapshot verify --json --store {} --pubkey {}",
            s(&self.store),
            s(&self.public)
        ))
        .ok()
        .json();
        (v["seq"].as_u64().unwrap(), v["base"].as_u64().unwrap())
    }

    /// Restores every seq from the chain's base and compares each with what it captured.
    fn assert_restores(&self) {
        let (head, base) = self.head_and_base();
        for seq in base..=head {
            let out = self
                .dir
                .path()
                .join(format!("r{seq}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&out);
            cli(&format!(
                "snapshot restore --json --store {} --pubkey {} --seq {seq} --out {}",
                s(&self.store),
                s(&self.public),
                s(&out)
            ))
            .ok();
            assert_eq!(
                b3sum(&out.join("mem")),
                self.sums[seq as usize],
                "seq {seq}"
            );
            std::fs::remove_dir_all(&out).unwrap();
        }
    }

    fn assert_clean(&self) {
        let f = cli(&format!(
            "snapshot fsck --json --repair --store {}",
            s(&self.store)
        ))
        .ok()
        .json();
        assert_eq!(f["errors"].as_array().unwrap().len(), 0, "{f}");
        let f = cli(&format!("snapshot fsck --json --store {}", s(&self.store)))
            .ok()
            .json();
        assert_eq!(f["leftovers"].as_array().unwrap().len(), 0, "{f}");
    }
}

#[test]
fn prune_keeps_every_kept_seq_byte_identical() {
    let mut c = Chain::new(8, 4 << 20);
    let r = cli(&c.prune_line("--keep 3")).ok().json();
    assert_eq!(
        (r["base"].as_u64(), r["folded"].as_u64()),
        (Some(5), Some(5)),
        "{r}"
    );
    assert_eq!(c.head_and_base(), (7, 5));
    c.assert_restores();
    let log = cli(&format!("snapshot log --json --store {}", s(&c.store))).ok();
    assert_eq!(log.stdout.lines().count(), 3);
    cli(&format!(
        "snapshot restore --store {} --pubkey {} --seq 2 --out {}",
        s(&c.store),
        s(&c.public),
        s(&c.dir.path().join("old"))
    ))
    .fails(2, "seq 2 was pruned: the chain starts at seq 5");
    // Age: everything is younger than a day, so nothing goes.
    let r = cli(&c.prune_line("--keep-within 1d")).ok().json();
    assert_eq!(r["folded"].as_u64(), Some(0), "{r}");
    c.take(99);
    c.assert_restores();
    c.assert_clean();
    // The text form says what happened on one line.
    let text = cli(&c.prune_line("--keep 2").replace("--json ", ""))
        .ok()
        .stdout;
    assert!(
        text.starts_with("folded 2 seq(s) under a rebase at seq 7"),
        "{text}"
    );
}

/// `snapshot init --no-head-cache`: the store keeps the head's page digests but no copy of its
/// image; every seq still restores to what it captured, before and after a prune.
#[test]
fn a_store_without_head_cache_restores_every_seq_and_prunes() {
    let mut c = Chain::with_init(6, 2 << 20, "--no-head-cache");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.store.join("store.json")).unwrap()).unwrap();
    assert_eq!(meta["head_cache"], false, "{meta}");
    assert!(c.store.join("head/0.digests").exists());
    assert!(!c.store.join("head/0.img").exists());
    c.assert_restores();
    cli(&c.prune_line("--keep 3")).ok();
    c.take(6);
    c.assert_restores();
    assert!(!c.store.join("head/0.img").exists());
    c.assert_clean();
}

/// `snapshot init --anchor-every 3` and `snapshot take --anchor`: anchor links verify, and every
/// seq restores to what it captured (b3sum), before and after a prune.
#[test]
fn anchor_links_verify_and_every_seq_restores() {
    let mut c = Chain::with_init(8, 2 << 20, "--anchor-every 3");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.store.join("store.json")).unwrap()).unwrap();
    assert_eq!(meta["anchor_every"], 3, "{meta}");
    // Every take writes other pages: the interval's anchors would save nothing, so none.
    let j = c.take(8);
    assert_eq!(
        (j["seq"].as_u64(), j["anchor"].as_bool()),
        (Some(8), Some(false)),
        "{j}"
    );
    let j = c.take_with(9, "--anchor");
    assert_eq!(
        (j["seq"].as_u64(), j["anchor"].as_bool()),
        (Some(9), Some(true)),
        "{j}"
    );
    assert!(j["carried_pages"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(c.take(10)["anchor"].as_bool(), Some(false));
    let log = cli(&format!("snapshot log --json --store {}", s(&c.store))).ok();
    let anchors: Vec<u64> = (log.stdout.lines())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["anchor"] == true)
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(anchors, [9], "{}", log.stdout);
    c.assert_restores();
    cli(&c.prune_line("--keep 5")).ok();
    c.take(11);
    c.take(12);
    c.assert_restores();
    c.assert_clean();
    // Text output names the anchor.
    let path = c.dir.path().join("mem.img");
    let text = cli(&format!(
        "snapshot take --store {} --key {} --memory mem={} --anchor",
        s(&c.store),
        s(&c.key),
        s(&path)
    ))
    .ok()
    .stdout;
    assert!(text.contains(", anchor ("), "{text}");
}

#[test]
fn bad_prune_arguments_are_refused_and_change_nothing() {
    let c = Chain::new(3, 1 << 20);
    let before = std::fs::read(c.store.join("HEAD")).unwrap();
    cli(&c.prune_line("--keep 0")).fails(2, "keep 0 seqs: expected at least 1");
    cli(&c.prune_line("--keep-within 7x"))
        .fails(2, "--keep-within \"7x\": expected a whole number");
    // Another key than the chain's: refused before anything is written (a rebase is signed by
    // the keys in force after its seq).
    let other = c.dir.path().join("o.key");
    cli(&format!("keygen --alg ed25519 --out {}", s(&other))).ok();
    cli(&format!(
        "snapshot prune --store {} --pubkey {} --key {} --keep 1",
        s(&c.store),
        s(&c.public),
        s(&other)
    ))
    .fails(
        2,
        "a rebase of seq 2 is signed by the keys in force after it",
    );
    assert_eq!(std::fs::read(c.store.join("HEAD")).unwrap(), before);
    c.assert_restores();
    c.assert_clean();
}

#[test]
fn kill_during_prune_loses_nothing() {
    let mut c = Chain::new(6, 16 << 20);
    let t = std::time::Instant::now();
    cli(&c.prune_line("--keep 5")).ok();
    let span = t.elapsed().as_millis() as u64 + 20;
    let hooks: &[&str] = if cfg!(feature = "fault-injection") {
        &["prune-before-head", "prune-after-head"]
    } else {
        &[]
    };
    let runs: Vec<(Option<&str>, u64)> = (0..6u64)
        .map(|i| (None, i * span / 5))
        .chain(hooks.iter().map(|&p| (Some(p), 0)))
        .collect();
    let mut seed = 100;
    for (point, delay) in runs {
        // Two more seqs each round, so that every prune has something to fold.
        for _ in 0..2 {
            seed += 1;
            c.take(seed);
        }
        let (_, base_before) = c.head_and_base();
        let mut cmd = Command::new(bin());
        cmd.args(c.prune_line("--keep 5").split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = point {
            cmd.env("VMATTEST_FAIL_AT", p);
        }
        let mut child = cmd.spawn().unwrap();
        if point.is_none() {
            std::thread::sleep(Duration::from_millis(delay));
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        if point.is_some() {
            assert!(!status.success(), "{point:?}: the prune should abort");
        }
        let (head, base) = c.head_and_base();
        match point {
            Some("prune-before-head") => assert_eq!(base, base_before),
            Some(_) => assert_eq!(base, head - 4),
            None => assert!(base == base_before || base == head - 4, "base {base}"),
        }
        c.assert_restores();
        c.assert_clean();
    }
}
