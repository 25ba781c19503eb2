//! `vmattest hostd` as a real process on one host: two spec guests and a libvirt domain (a
//! private libvirtd) under TCG, a real server, the daemon's own config file. Scheduled
//! snapshots, answered challenges, a rollback action, SIGHUP adding a fourth guest, SIGTERM
//! between captures, and SIGKILL in the middle of a capture.
//! Needs the `libvirt` and `fault-injection` features and the test guest.
#![cfg(all(feature = "libvirt", feature = "fault-injection"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::domain::TestDomain;
use common::guest::Guest;
use common::runtime::{
    agent_token, baseline_chain, patch_kernel_text, register_host_and_policy, register_vm, s,
    write_keys, write_policy,
};
use common::server::Server;
use common::vmattest;
use vmattest_testkit::PrivateLibvirt;

const TIMEOUT: Duration = Duration::from_secs(120);

/// The daemon, stopped by PID when dropped: SIGTERM, so that a capture in flight finishes and
/// leaves nothing behind, then SIGKILL after a minute.
struct Hostd {
    child: Option<Child>,
    log: PathBuf,
}

impl Hostd {
    /// Starts it; with `hold`, every capture stops at that fault-injection point. Its scratch
    /// directories go to `tmp`, inside the test's directory.
    fn start(config: &Path, log: &Path, hold: Option<&str>) -> Hostd {
        let tmp = config.with_file_name("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmattest"));
        c.args(["hostd", "--log-format", "json", "--config"])
            .arg(config)
            .env("TMPDIR", &tmp)
            .stdout(Stdio::null());
        if let Some(point) = hold {
            c.env("VMATTEST_HOLD_AT", point).stderr(Stdio::piped());
        } else {
            c.stderr(std::fs::File::create(log).unwrap());
        }
        Hostd {
            child: Some(c.spawn().unwrap()),
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().unwrap().id()).unwrap()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// SIGTERM; the exit code.
    fn stop(&mut self) -> i32 {
        self.signal("-TERM");
        let status = self.child.take().unwrap().wait().unwrap();
        status.code().unwrap_or(-1)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Hostd {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn status(config: &Path) -> serde_json::Value {
    vmattest(["--json", "host", "status", "--config", &s(config)])
        .ok()
        .json()
}

fn vm_status<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["vms"].as_array()?.iter().find(|v| v["name"] == name)
}

/// Waits until `ok` holds for VM `name`'s status entry.
fn wait_for(config: &Path, name: &str, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let t = Instant::now();
    loop {
        // The daemon writes its status file after its first event.
        let run = vmattest(["--json", "host", "status", "--config", &s(config)]);
        let st = if run.code == 0 {
            run.json()
        } else {
            serde_json::Value::Null
        };
        if vm_status(&st, name).is_some_and(&ok) {
            return;
        }
        assert!(t.elapsed() < TIMEOUT, "{name}: {what}: {st:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn seq_of(v: &serde_json::Value) -> u64 {
    v["last_snapshot"]["seq"].as_u64().unwrap_or(0)
}

fn affirmed_after(v: &serde_json::Value, result: i64) -> bool {
    v["last_attestation"]["status"] == "affirming"
        && v["last_attestation"]["result_id"].as_i64().unwrap_or(0) > result
}

fn head_seq(store: &Path) -> u64 {
    let out = vmattest(["--json", "snapshot", "log", "--store", &s(store)]).ok();
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|j| j["seq"].as_u64())
        .max()
        .unwrap()
}

fn snapshots(store: &Path) -> String {
    format!(
        "[vm.snapshots]\nstore = \"{}\"\ninterval_secs = 4\nkeys = [\"chain.key\"]\n",
        s(store)
    )
}

#[test]
fn hostd_keeps_every_guest_attested_and_survives_reload_stop_and_kill() {
    let lv = PrivateLibvirt::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // h3 is captured live, so its RAM is on shared memory.
    let shm = tempfile::Builder::new()
        .prefix("vmattest-hostd")
        .tempdir_in("/dev/shm")
        .unwrap();
    let (g1, g2, g3) = (
        Guest::new(dir, "h1"),
        Guest::new(dir, "h2"),
        Guest::with_run_dir(dir, "h3", "", &shm.path().join("run-h3")),
    );
    for g in [&g1, &g2, &g3] {
        g.start();
    }
    let d = TestDomain::define(&lv, "hd", true);
    d.start();

    let resolved = write_policy(dir, &g1.console());
    write_keys(dir);
    let server = Server::start(&dir.join("state"), None);
    let admin = server.admin_token();
    let policy_id = register_host_and_policy(&server, &admin, dir);
    let stores: Vec<PathBuf> = ["h1", "h2", "h3", "hd"]
        .iter()
        .map(|n| dir.join(format!("store-{n}")))
        .collect();
    let domain_args = ["--domain", "hd", "--connect", lv.uri()];
    for (i, (name, args)) in [
        ("h1", vec!["--vm", g1.arg()]),
        ("h2", vec!["--vm", g2.arg()]),
        ("h3", vec!["--vm", g3.arg()]),
        ("hd", domain_args.to_vec()),
    ]
    .into_iter()
    .enumerate()
    {
        baseline_chain(dir, &stores[i], name, &args);
        let extra: &[&str] = if name == "h2" {
            &["--on-alert", "rollback"]
        } else {
            &[]
        };
        register_vm(&server, &admin, dir, name, &policy_id, &stores[i], extra);
    }
    let token = agent_token(&server, &admin, dir);

    // Relative key paths are the daemon's working directory's: absolute ones here.
    let chain_key = s(&dir.join("chain.key"));
    let config_text = |with_h3: bool, rotate: bool| {
        let mut c = format!(
            "state_dir = \"{}\"\n[server]\nurl = \"{}\"\ntoken_file = \"{}\"\n\
             [evidence]\nkey = \"{}\"\n[defaults]\nattest_interval_secs = 2\n",
            s(&dir.join("hostd")),
            server.url(),
            s(&token),
            s(&dir.join("host.key")),
        );
        for (g, store) in [(&g1, &stores[0]), (&g2, &stores[1])] {
            c.push_str(&format!("[[vm]]\nspec = \"{}\"\n", g.arg()));
            c.push_str(&snapshots(store));
        }
        // h1 keeps its newest two seqs; h2 keeps seq 0, the target of its rollback action.
        c = c.replacen(
            "keys = [\"chain.key\"]\n",
            "keys = [\"chain.key\"]\nkeep = 2\n",
            1,
        );
        if with_h3 {
            c.push_str(&format!("[[vm]]\nspec = \"{}\"\n", g3.arg()));
            c.push_str(&snapshots(&stores[2]));
            c.push_str("live = true\n");
        }
        c.push_str(&format!(
            "[[domain]]\nname = \"hd\"\nconnect = \"{}\"\n",
            lv.uri()
        ));
        c.push_str(&snapshots(&stores[3]).replace("[vm.", "[domain."));
        if rotate {
            c.push_str(&format!(
                "rotate_keys = [\"{}\"]\n",
                s(&dir.join("rot.key"))
            ));
        }
        c.replace("\"chain.key\"", &format!("\"{chain_key}\""))
    };
    let config = dir.join("host.toml");
    std::fs::write(&config, config_text(false, false)).unwrap();

    let mut hostd = Hostd::start(&config, &dir.join("hostd.log"), None);
    // Challenges for all three are answered, and each chain grows on schedule.
    for name in ["h1", "h2", "hd"] {
        wait_for(&config, name, "attested and snapshotted", |v| {
            v["rounds"].as_u64().unwrap_or(0) >= 2
                && v["last_attestation"]["status"] == "affirming"
                && seq_of(v) >= 1
        });
    }
    for store in [&stores[0], &stores[1], &stores[3]] {
        assert!(head_seq(store) >= 1, "{}", store.display());
    }
    let text = vmattest(["host", "status", "--config", &s(&config)])
        .ok()
        .stdout;
    assert!(
        text.contains("h1  spec") && text.contains("hd  domain hd"),
        "{text}"
    );
    assert!(!text.contains("h3"), "{text}");

    // A patched kernel on h2: the server's rollback action is carried out by the daemon.
    let last = vm_status(&status(&config), "h2").unwrap()["last_attestation"]["result_id"]
        .as_i64()
        .unwrap();
    patch_kernel_text(&resolved, &g2.dir.join("ram"));
    wait_for(&config, "h2", "rolled back to seq 0", |v| {
        v["last_rollback_seq"] == 0 && affirmed_after(v, last)
    });
    g2.next_tick(None);

    // SIGHUP adds h3; the others keep their workers.
    std::fs::write(&config, config_text(true, false)).unwrap();
    hostd.signal("-HUP");
    wait_for(&config, "h3", "attested after the reload", |v| {
        v["last_attestation"]["status"] == "affirming" && seq_of(v) >= 1
    });

    // SIGTERM: a clean exit, every guest running.
    assert_eq!(hostd.stop(), 0, "{}", hostd.log_text());
    assert!(status(&config)["stopped"].as_bool().unwrap());
    let log = hostd.log_text();
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "JSON log lines: {log}"
    );
    let heads: Vec<u64> = stores.iter().map(|st| head_seq(st)).collect();

    // SIGKILL while a capture holds its guest paused: the guardian resumes every guest.
    let mut held = Hostd::start(&config, &dir.join("held.log"), Some("after-stop"));
    let stderr = held.child.as_mut().unwrap().stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("holding at") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(TIMEOUT)
        .expect("a capture reached its hold point");
    held.signal("-KILL");
    let _ = held.child.take().unwrap().wait();
    for g in [&g1, &g2, &g3] {
        let t = g.ticks().last().copied();
        g.next_tick(t);
    }
    let t = Instant::now();
    while d.state() != "running" {
        assert!(t.elapsed() < TIMEOUT, "hd: {}", d.state());
        std::thread::sleep(Duration::from_millis(200));
    }
    d.next_tick();

    // A restart continues each chain; hd's rotates to a new key, which then signs alone.
    vmattest([
        "keygen",
        "--alg",
        "ed25519",
        "--out",
        &s(&dir.join("rot.key")),
    ])
    .ok();
    std::fs::write(&config, config_text(true, true)).unwrap();
    let hostd = Hostd::start(&config, &dir.join("hostd2.log"), None);
    for (i, name) in ["h1", "h2", "h3", "hd"].iter().enumerate() {
        let before = heads[i] + u64::from(*name == "hd");
        wait_for(&config, name, "a new link after the restart", |v| {
            seq_of(v) > before
        });
        vmattest([
            "snapshot",
            "verify",
            "--store",
            &s(&stores[i]),
            "--pubkey",
            &s(&dir.join("chain.key.pub")),
        ])
        .ok();
    }
    let links: Vec<serde_json::Value> =
        vmattest(["--json", "snapshot", "log", "--store", &s(&stores[3])])
            .ok()
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let rotations: Vec<&serde_json::Value> = links
        .iter()
        .filter(|l| l["rotates_to"].is_array())
        .collect();
    assert_eq!(rotations.len(), 1, "{links:?}");
    let last = links.last().unwrap();
    assert_eq!(last["key_ids"], rotations[0]["rotates_to"], "{last}");
    // Retention: h1's chain was folded to its newest seqs under a signed rebase, and verifies.
    let v = vmattest([
        "--json",
        "snapshot",
        "verify",
        "--store",
        &s(&stores[0]),
        "--pubkey",
        &s(&dir.join("chain.key.pub")),
    ])
    .ok()
    .json();
    let (base, head) = (v["base"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
    assert!(
        base > 0 && head - base < 4,
        "h1 holds seqs {base} to {head}"
    );
    let st = status(&config);
    let pruned = &vm_status(&st, "h1").unwrap()["last_prune"];
    assert!(pruned["folded"].as_u64().unwrap_or(0) > 0, "{pruned}");
    // Stopped, the daemon leaves no capture scratch behind (the killed one's guardian removed
    // its own).
    drop(hostd);
    let left: Vec<_> = std::fs::read_dir(dir.join("tmp"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
