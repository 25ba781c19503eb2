//! `vmattest snapshot ...` end to end: JSON output, kill -9 and injected crashes during take,
//! concurrent writers, bundles refused without touching the target, and bad input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Runs a command line that must succeed and print one JSON value.
fn json(line: &str) -> serde_json::Value {
    cli(line).ok().json()
}

fn errors(fsck: &serde_json::Value) -> usize {
    fsck["errors"].as_array().unwrap().len()
}

/// A temp dir with an Ed25519 key pair: (dir, key, pubkey).
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    cli(&format!("keygen --alg ed25519 --out {}", s(&key))).ok();
    let public = dir.path().join("k.key.pub");
    (dir, key, public)
}

fn init(store: &Path, vm: &str) -> serde_json::Value {
    json(&format!(
        "snapshot init --json --store {} --vm-id {vm}",
        s(store)
    ))
}

/// `snapshot take --json`; components as ("--memory NAME", PATH).
fn take_line(store: &Path, key: &Path, comps: &[(&str, &Path)]) -> String {
    let mut a = format!("snapshot take --json --store {} --key {}", s(store), s(key));
    for (flag, path) in comps {
        let (flag, name) = flag.split_once(' ').unwrap();
        a += &format!(" {flag} {name}={}", s(path));
    }
    a
}

fn take(store: &Path, key: &Path, comps: &[(&str, &Path)]) -> serde_json::Value {
    cli(&take_line(store, key, comps)).ok().json()
}

fn verify(store: &Path, public: &Path, extra: &str) -> Run {
    cli(&format!(
        "snapshot verify --json --store {} --pubkey {} {extra}",
        s(store),
        s(public)
    ))
}

fn fsck(store: &Path) -> serde_json::Value {
    json(&format!("snapshot fsck --json --store {}", s(store)))
}

fn log(store: &Path) -> Vec<serde_json::Value> {
    let r = cli(&format!("snapshot log --json --store {}", s(store))).ok();
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn root_of(image: &Path) -> String {
    json(&format!("measure --json {}", s(image)))["root"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every file under `root` with its bytes.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Rewrites `n` pages of `data` in place, seeded.
fn scribble(data: &mut [u8], n: usize, seed: u64) {
    let pages = data.len() / PAGE;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = (x as usize) % pages;
        let page = &mut data[p * PAGE..(p + 1) * PAGE];
        match i % 4 {
            0 => page.fill(0),
            1 => page[(x >> 20) as usize % PAGE] ^= 0x81,
            _ => page.iter_mut().enumerate().for_each(|(j, b)| {
                *b = (x >> (j % 61)) as u8 ^ j as u8;
            }),
        }
    }
}

#[test]
fn end_to_end_with_json() {
    let (dir, key, public) = setup();
    let d = dir.path();
    let store = d.join("store");
    let j = init(&store, "vm-e2e");
    assert_eq!(
        (j["vm_id"].as_str(), j["alg"].as_str()),
        (Some("vm-e2e"), Some("blake3"))
    );
    assert_eq!(j["encrypted"], false);

    let mut mem = vm_like(64 * PAGE + 5, 1);
    let mut disk = vm_like(32 * PAGE, 2);
    let mut dev = b"cpu regs".to_vec();
    let (mp, dp, vp) = (d.join("mem.img"), d.join("disk.img"), d.join("dev.bin"));
    let comps = [
        ("--memory mem", &*mp),
        ("--disk disk", &*dp),
        ("--device-state dev", &*vp),
    ];
    let (mut takes, mut history) = (Vec::new(), Vec::new());
    for round in 0..3u64 {
        std::fs::write(&mp, &mem).unwrap();
        std::fs::write(&dp, &disk).unwrap();
        std::fs::write(&vp, &dev).unwrap();
        let t = take(&store, &key, &comps);
        assert_eq!(t["seq"], round);
        let c = &t["components"];
        assert_eq!(
            (&c[0]["name"], &c[1]["name"], &c[2]["name"]),
            (&"mem".into(), &"disk".into(), &"dev".into())
        );
        assert_eq!(c[0]["root"].as_str().unwrap(), root_of(&mp));
        assert_eq!(c[2]["kind"], "device-state");
        assert_eq!(t["total_pages"], 65 + 32 + 1);
        assert!(t["changed_pages"].as_u64().unwrap() > 0);
        takes.push(t);
        history.push((mem.clone(), disk.clone(), dev.clone()));
        scribble(&mut mem, 5, round + 1);
        scribble(&mut disk, 2, round + 9);
        dev[0] ^= 1;
    }

    let links = log(&store);
    assert_eq!(links.len(), 3);
    for (k, l) in links.iter().enumerate() {
        assert_eq!(l["seq"], k);
        assert_eq!(l["link"], takes[k]["link"]);
        assert_eq!(l["state_root"], takes[k]["state_root"]);
        let zero = serde_json::Value::from("0".repeat(64));
        assert_eq!(
            &l["prev"],
            if k == 0 { &zero } else { &links[k - 1]["link"] }
        );
    }
    let v = verify(&store, &public, "").ok().json();
    assert_eq!(
        (v["ok"].as_bool(), v["seq"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(v["state_root"], takes[2]["state_root"]);
    assert_eq!(v["link"], takes[2]["link"]);
    let v = verify(&store, &public, "--upto 1").ok().json();
    assert_eq!(
        (v["seq"].as_u64(), &v["state_root"]),
        (Some(1), &takes[1]["state_root"])
    );
    verify(&store, &public, "--upto 3").fails(2, "head is seq 2");

    let (st, pk) = (s(&store), s(&public));
    let out = d.join("r1");
    let r = json(&format!(
        "snapshot restore --json --store {st} --pubkey {pk} --seq 1 --out {}",
        s(&out)
    ));
    assert_eq!(r["seq"], 1);
    assert_eq!(r["components"], takes[1]["components"]);
    let read = |n: &str| std::fs::read(out.join(n)).unwrap();
    assert_eq!((read("mem"), read("disk"), read("dev")), history[1]);

    let bundle = d.join("all.vmab");
    let e = json(&format!(
        "snapshot export --json --store {st} --out {}",
        s(&bundle)
    ));
    assert_eq!(e["links"], 3);
    assert_eq!(e["bytes"], std::fs::metadata(&bundle).unwrap().len());
    let copy = d.join("copy");
    let i = import(&copy, &public, &bundle).ok().json();
    assert_eq!(
        (i["new_links"].as_u64(), i["head"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(i["link"], takes[2]["link"]);
    let v = verify(&copy, &public, "").ok().json();
    assert_eq!(v["state_root"], takes[2]["state_root"]);

    for st in [&store, &copy] {
        let f = fsck(st);
        assert_eq!(
            (f["head"].as_u64(), f["links"].as_u64()),
            (Some(2), Some(3))
        );
        assert_eq!(
            (errors(&f), f["leftovers"].as_array().unwrap().len()),
            (0, 0),
            "{f}"
        );
    }
    assert_eq!(fsck(&store)["cache_current"], true);
    // The imported store's cache is rebuilt by its first take.
    assert_eq!(take(&copy, &key, &comps)["seq"], 3);
    assert_eq!(fsck(&copy)["cache_current"], true);
    verify(&copy, &public, "").ok();

    let proof = d.join("p.proof");
    let pf = s(&proof);
    let prove = |args: &str| {
        json(&format!(
            "snapshot prove --json --store {st} --pubkey {pk} --out {pf} {args}"
        ))
    };
    let p = prove("--component mem --page 3 --count 2");
    assert_eq!((p["seq"].as_u64(), p["page"].as_u64()), (Some(2), Some(3)));
    assert_eq!(p["root"], takes[2]["components"][0]["root"]);
    let root = p["root"].as_str().unwrap();
    cli(&format!("verify-proof {pf} --root {root}")).ok();
    let p0 = prove("--seq 0 --component disk --page 0");
    assert_eq!(p0["root"], takes[0]["components"][1]["root"]);
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);
}

/// After a crash the store must check clean and verify, with the head at `prev` or `prev + 1`
/// (then holding `image`); a following take must work. Returns whether the head moved.
fn check_after_crash(
    store: &Path,
    key: &Path,
    public: &Path,
    image: &Path,
    prev: &[serde_json::Value],
) -> bool {
    let f = fsck(store);
    assert_eq!(errors(&f), 0, "{f}");
    let v = verify(store, public, "").ok().json();
    let head = v["seq"].as_u64().unwrap();
    let before = prev.len() as u64 - 1;
    let links = log(store);
    assert_eq!(&links[..prev.len()], prev, "committed links changed");
    let advanced = if head == before {
        false
    } else {
        assert_eq!(head, before + 1, "head is neither the old nor the new one");
        assert_eq!(v["components"][0]["root"].as_str().unwrap(), root_of(image));
        true
    };
    let t = take(store, key, &[("--memory mem", image)]);
    assert_eq!(t["seq"], head + 1);
    assert_eq!(verify(store, public, "").ok().json()["seq"], head + 1);
    advanced
}

#[test]
fn crashes_during_take_leave_a_sound_store() {
    let (dir, key, public) = setup();
    let d = dir.path();
    let store = d.join("store");
    init(&store, "vm-crash");
    let mp = d.join("mem.img");
    let mut mem = vm_like(64 << 20, 3);
    std::fs::write(&mp, &mem).unwrap();
    take(&store, &key, &[("--memory mem", &mp)]);
    // Time one undisturbed take of this size, then kill takes at 15 points across that span.
    scribble(&mut mem, 3000, 999);
    std::fs::write(&mp, &mem).unwrap();
    let t = std::time::Instant::now();
    take(&store, &key, &[("--memory mem", &mp)]);
    let span = t.elapsed().as_millis() as u64 + 20;
    let (mut advanced, mut kept) = (0, 0);
    // The commit points exist only in builds with the crash hooks.
    let hooks: &[&str] = if cfg!(feature = "fault-injection") {
        &["before-head", "after-head", "before-stamp"]
    } else {
        &[]
    };
    let runs: Vec<(Option<&str>, u64)> = (0..15u64)
        .map(|i| (None, i * span / 14))
        .chain(hooks.iter().map(|&p| (Some(p), 0)))
        .collect();
    for (i, (point, delay)) in runs.into_iter().enumerate() {
        // Many changed pages, so the take spends its time writing batches.
        scribble(&mut mem, 3000, i as u64 + 1);
        std::fs::write(&mp, &mem).unwrap();
        let prev = log(&store);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmattest"));
        cmd.args(take_line(&store, &key, &[("--memory mem", &mp)]).split_whitespace())
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = point {
            cmd.env("VMATTEST_FAIL_AT", p);
        }
        let mut child = cmd.spawn().unwrap();
        let status = if point.is_some() {
            child.wait().unwrap()
        } else {
            std::thread::sleep(Duration::from_millis(delay));
            let _ = child.kill();
            child.wait().unwrap()
        };
        if point.is_some() {
            assert!(!status.success(), "{point:?}: the take should abort");
        }
        let adv = check_after_crash(&store, &key, &public, &mp, &prev);
        match point {
            Some("before-head") => assert!(!adv, "before-head moved HEAD"),
            Some(p) => assert!(adv, "{p}: HEAD not moved"),
            None => {}
        }
        *(if adv { &mut advanced } else { &mut kept }) += 1;
    }
    // Of the hooked runs, one keeps the head and two advance it.
    let (min_kept, min_advanced) = if hooks.is_empty() { (1, 0) } else { (2, 2) };
    assert!(
        kept >= min_kept && advanced >= min_advanced,
        "kept {kept}, advanced {advanced}"
    );
    let rep = json(&format!(
        "snapshot fsck --json --repair --store {}",
        s(&store)
    ));
    assert_eq!(rep["repaired"], true);
    let left = rep["leftovers"].as_array().unwrap().len();
    eprintln!(
        "kill -9 over {span} ms: head kept {kept}, moved {advanced}; {left} leftover files repaired"
    );
    let f = fsck(&store);
    assert_eq!(f["leftovers"].as_array().unwrap().len(), 0, "{f}");
    verify(&store, &public, "").ok();
}

/// The crash hooks used to be read from the environment by every build: anyone who could set
/// `VMATTEST_FAIL_AT` could make a release `vmattest` abort half way through a take.
#[test]
#[cfg_attr(
    feature = "fault-injection",
    ignore = "checks a build without the crash hooks"
)]
fn regression_crash_hooks_are_not_in_default_builds() {
    let (dir, key, _) = setup();
    let d = dir.path();
    let store = d.join("store");
    init(&store, "vm-hooks");
    let mp = write(d, "mem.img", &vm_like(1 << 20, 7));
    for point in ["before-head", "after-head", "before-stamp"] {
        let out = Command::new(env!("CARGO_BIN_EXE_vmattest"))
            .args(take_line(&store, &key, &[("--memory mem", &mp)]).split_whitespace())
            .env("VMATTEST_FAIL_AT", point)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(log(&store).len(), 3);
}

#[test]
fn concurrent_takes_one_writer_at_a_time() {
    let (dir, key, public) = setup();
    let d = dir.path();
    let store = d.join("store");
    init(&store, "vm-race");
    let mut mem = vm_like(16 << 20, 5);
    let base = write(d, "base.img", &mem);
    take(&store, &key, &[("--memory mem", &base)]);
    let mut locked = 0;
    for round in 0..6u64 {
        let prev = log(&store).len() as u64 - 1;
        let imgs: Vec<PathBuf> = (0..2u64)
            .map(|k| {
                scribble(&mut mem, 500, round * 2 + k + 1);
                write(d, &format!("m{k}.img"), &mem)
            })
            .collect();
        let children: Vec<_> = imgs
            .iter()
            .map(|img| {
                Command::new(env!("CARGO_BIN_EXE_vmattest"))
                    .args(take_line(&store, &key, &[("--memory mem", img)]).split_whitespace())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut seqs = Vec::new();
        for c in children {
            let out = c.wait_with_output().unwrap();
            let run = Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            if run.code == 0 {
                seqs.push(run.json()["seq"].as_u64().unwrap());
            } else {
                // Another writer is the environment's state, not bad input.
                run.fails(3, "lock");
                locked += 1;
            }
        }
        seqs.sort_unstable();
        assert!(!seqs.is_empty());
        assert_eq!(
            seqs,
            (prev + 1..=prev + seqs.len() as u64).collect::<Vec<_>>()
        );
        let v = verify(&store, &public, "").ok().json();
        assert_eq!(v["seq"], prev + seqs.len() as u64);
        assert_eq!(errors(&fsck(&store)), 0);
    }
    eprintln!("concurrent takes: {locked} refused with the lock held");
}

/// Exit 1 or 2 with one `vmattest: ` line mentioning `needle`.
fn refused(r: Run, needle: &str) {
    let code = r.code;
    assert!(code == 1 || code == 2, "exit {code}: {}", r.stderr);
    r.fails(code, needle);
}

fn import(store: &Path, public: &Path, bundle: &Path) -> Run {
    cli(&format!(
        "snapshot import --json --store {} --pubkey {} {}",
        s(store),
        s(public),
        s(bundle)
    ))
}

fn export(store: &Path, out: &Path, range: &str) {
    cli(&format!(
        "snapshot export --store {} --out {} {range}",
        s(store),
        s(out)
    ))
    .ok();
}

#[test]
fn bad_bundles_are_refused_and_change_nothing() {
    let (dir, key, public) = setup();
    let d = dir.path();
    let (a, t) = (d.join("a"), d.join("t"));
    init(&a, "vm-a");
    let mut mem = vm_like(48 * PAGE, 1);
    let mp = d.join("mem.img");
    for round in 0..4 {
        std::fs::write(&mp, &mem).unwrap();
        take(&a, &key, &[("--memory mem", &mp)]);
        scribble(&mut mem, 6, round + 1);
    }
    let (all, b01, b0) = (d.join("all"), d.join("b01"), d.join("b0"));
    export(&a, &all, "");
    export(&a, &b01, "--to 1");
    export(&a, &b0, "--to 0");
    import(&t, &public, &b01).ok();

    // Another VM.
    let x = d.join("x");
    init(&x, "vm-x");
    take(&x, &key, &[("--memory mem", &mp)]);
    let bx = d.join("bx");
    export(&x, &bx, "");
    // A fork: same VM and baseline, then another history.
    let f = d.join("f");
    import(&f, &public, &b0).ok();
    for k in 0..2 {
        let other = write(d, "other.img", &vm_like(48 * PAGE, 50 + k));
        take(&f, &key, &[("--memory mem", &other)]);
    }
    let bf = d.join("bf");
    export(&f, &bf, "");

    let good = std::fs::read(&all).unwrap();
    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();
    let n = good.len();
    // (crates/store/tests/bundle.rs sweeps many more positions in-process.)
    for at in [5, 20, n / 2, n - 1] {
        let mut b = good.clone();
        b[at] ^= 0x10;
        cases.push((format!("byte {at} flipped"), b, "bundle"));
    }
    for len in [100, n - 1] {
        cases.push((format!("cut at {len}"), good[..len].to_vec(), "bundle"));
    }
    for (what, p, needle) in [("another VM", &bx, "vm-x"), ("fork", &bf, "fork")] {
        cases.push((what.into(), std::fs::read(p).unwrap(), needle));
    }

    let before = files(&t);
    for (what, bytes, needle) in &cases {
        let p = d.join("case.vmab");
        std::fs::write(&p, bytes).unwrap();
        let r = import(&t, &public, &p);
        refused(r, needle);
        assert!(before == files(&t), "{what}: the target store changed");
    }
    // regression_reimport_is_a_noop: links already here import as a no-op, exit 0.
    for p in [&b0, &b01] {
        let j = import(&t, &public, p).ok().json();
        assert_eq!(j["new_links"], 0, "{j}");
        assert!(before == files(&t), "a re-import changed the target store");
    }
    // The intact bundle still imports.
    assert_eq!(import(&t, &public, &all).ok().json()["head"], 3);
    assert_eq!(
        verify(&t, &public, "").ok().json()["link"],
        log(&a)[3]["link"]
    );
}

#[test]
fn max_age_upto_and_bad_input() {
    let (dir, key, public) = setup();
    let d = dir.path();
    let store = d.join("store");
    init(&store, "vm-age");
    let mp = write(d, "mem.img", &vm_like(16 * PAGE, 1));
    take(&store, &key, &[("--memory mem", &mp)]);
    take(&store, &key, &[("--memory mem", &mp)]);
    // Ages are whole seconds; after 1.1 s the head is at least 1 s old.
    std::thread::sleep(Duration::from_millis(1100));
    verify(&store, &public, "--max-age 0").fails(1, "old");
    verify(&store, &public, "--max-age 3600").ok();
    assert_eq!(verify(&store, &public, "--upto 0").ok().json()["seq"], 0);

    let missing = d.join("nope");
    verify(&missing, &public, "").fails(2, "not a vmattest store");
    cli(&take_line(&missing, &key, &[("--memory mem", &mp)])).fails(2, "not a vmattest store");
    cli(&format!("snapshot log --store {}", s(&missing))).fails(2, "not a vmattest store");
    assert!(!missing.exists());

    let head = std::fs::read(store.join("HEAD")).unwrap();
    let gone = d.join("gone.img");
    cli(&take_line(&store, &key, &[("--memory mem", &gone)])).fails(2, "no such file");
    cli(&take_line(&store, &key, &[("--memory mem", d)])).fails(2, "is a directory");
    let bigger = write(d, "big.img", &vm_like(17 * PAGE, 1));
    cli(&take_line(&store, &key, &[("--memory mem", &bigger)])).fails(2, "size");
    assert_eq!(std::fs::read(store.join("HEAD")).unwrap(), head);

    let proof = d.join("p");
    cli(&format!(
        "snapshot prove --store {} --pubkey {} --component cpu --page 0 --out {}",
        s(&store),
        s(&public),
        s(&proof)
    ))
    .fails(2, "--component \"cpu\"");
    assert!(!proof.exists());
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);

    let other = d.join("o.key");
    cli(&format!("keygen --alg ed25519 --out {}", s(&other))).ok();
    let other_pub = d.join("o.key.pub");
    verify(&store, &other_pub, "").fails(1, "signature");
    cli(&format!("snapshot init --store {} --vm-id v", s(&store))).fails(2, "not empty");
}
