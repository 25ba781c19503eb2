//! Configuration attestation through the `vmattest` binary: `config measure/show/disclose/
//! verify-disclosure/check` and the `vm launch` gate, locally and through a real server. The
//! launch tests boot the test guest from `scripts/build-guest.sh` under QEMU (TCG).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use common::guest::guest_dir;
use common::*;

const CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// The guest-visible settings of one test spec.
#[derive(Clone)]
struct Cfg {
    memory: u32,
    vcpus: u32,
    machine: &'static str,
    cmdline: String,
    kernel: PathBuf,
    disk: PathBuf,
    mac: &'static str,
}

impl Cfg {
    fn new(dir: &Path) -> Cfg {
        let disk = dir.join("disk0.raw");
        if !disk.exists() {
            std::fs::write(&disk, vm_like(1 << 20, 5)).unwrap();
        }
        Cfg {
            memory: 128,
            vcpus: 1,
            machine: "pc",
            cmdline: CMDLINE.into(),
            kernel: guest_dir().join("vmlinuz"),
            disk,
            mac: "52:54:00:12:34:56",
        }
    }

    /// Writes the spec `NAME.toml` (run dir `run-NAME`) under `dir`.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let spec = dir.join(format!("{name}.toml"));
        std::fs::write(
            &spec,
            format!(
                r#"name = "{name}"
memory_mib = {memory}
vcpus = {vcpus}
machine = "{machine}"
accel = "tcg"
run_dir = "run-{name}"

[boot]
kernel = "{kernel}"
initrd = "{initrd}"
cmdline = "{cmdline}"

[[disk]]
name = "disk0"
path = "{disk}"
format = "raw"

[[nic]]
mac = "{mac}"
"#,
                mac = self.mac,
                memory = self.memory,
                vcpus = self.vcpus,
                machine = self.machine,
                kernel = self.kernel.display(),
                initrd = guest_dir().join("initramfs.cpio.gz").display(),
                cmdline = self.cmdline,
                disk = self.disk.display(),
            ),
        )
        .unwrap();
        spec
    }
}

struct Keys {
    key: PathBuf,
    pubkey: PathBuf,
    other_pub: PathBuf,
}

fn keys(dir: &Path) -> Keys {
    let key = dir.join("key");
    let other = dir.join("other");
    vmattest(["keygen", "--alg", "ed25519", "--out", s(&key)]).ok();
    vmattest(["keygen", "--alg", "ed25519", "--out", s(&other)]).ok();
    Keys {
        pubkey: dir.join("key.pub"),
        other_pub: dir.join("other.pub"),
        key,
    }
}

fn measure(spec: &Path, key: &Path, out: &Path) -> serde_json::Value {
    let packages = manifest(spec.parent().unwrap(), "pkgs.txt", "1:1.35.0-4+b3");
    vmattest([
        "--json",
        "config",
        "measure",
        "--vm",
        s(spec),
        "--key",
        s(key),
        "--out",
        s(out),
        "--packages",
        s(&packages),
    ])
    .ok()
    .json()
}

/// A package manifest (`dpkg-query -W` form) in which busybox has `version`.
fn manifest(dir: &Path, name: &str, version: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("busybox {version}\nlinux-image-amd64 6.1.158-1\n"),
    )
    .unwrap();
    path
}

fn show(dir: &Path) -> serde_json::Value {
    vmattest(["--json", "config", "show", s(dir)]).ok().json()
}

/// The value of `name` in `config show --json` output.
fn value(shown: &serde_json::Value, name: &str) -> String {
    shown["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {shown}"))["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A reference that the measurement in `dir` meets.
fn reference_for(dir: &Path, out: &Path) {
    let m = show(dir);
    std::fs::write(
        out,
        format!(
            r#"[expect]
memory_mib = {memory}
cmdline = "{cmdline}"
"kernel.sha256" = "{kernel}"
"initrd.sha256" = "{initrd}"
"disk.disk0.root" = "{disk}"
"nic.0.mac" = "{mac}"
"packages.sha256" = "{packages}"

[range]
vcpus = [1, 2]

[set]
machine = ["pc"]
"#,
            memory = value(&m, "memory_mib"),
            cmdline = value(&m, "cmdline"),
            kernel = value(&m, "kernel.sha256"),
            initrd = value(&m, "initrd.sha256"),
            disk = value(&m, "disk.disk0.root"),
            mac = value(&m, "nic.0.mac"),
            packages = value(&m, "packages.sha256"),
        ),
    )
    .unwrap();
}

#[test]
fn measure_show_disclose_and_verify() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let k = keys(dir);
    let spec = Cfg::new(dir).write(dir, "m1");
    let out = dir.join("cfg");
    let m = measure(&spec, &k.key, &out);
    let names: Vec<&str> = m["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for n in [
        "boot",
        "cmdline",
        "disk.disk0.format",
        "disk.disk0.root",
        "initrd.sha256",
        "kernel.sha256",
        "machine",
        "memory_mib",
        "vcpus",
    ] {
        assert!(names.contains(&n), "{n} missing from {m}");
    }
    assert_eq!(m["count"], names.len());
    let opening = out.join("config.opening");
    let mode = std::fs::metadata(&opening).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "opening mode {mode:o}");
    assert!(out.join("config.statement").is_file());

    // The kernel digest is what sha256sum prints.
    let shown = show(&out);
    let sum = oracle("sha256sum", &[s(&guest_dir().join("vmlinuz"))]);
    assert_eq!(
        value(&shown, "kernel.sha256"),
        sum.split_whitespace().next().unwrap()
    );
    assert_eq!(value(&shown, "memory_mib"), "128");
    assert_eq!(shown["root"], m["root"]);
    assert_eq!(show(&out)["root"], m["root"], "root stable across shows");

    // A second measure of the same spec has fresh salts, so another root; no overwrite
    // without --force.
    vmattest([
        "config",
        "measure",
        "--vm",
        s(&spec),
        "--key",
        s(&k.key),
        "--out",
        s(&out),
    ])
    .fails(2, "--force");
    let again = dir.join("cfg2");
    assert_ne!(measure(&spec, &k.key, &again)["root"], m["root"]);

    // Disclose memory_mib and verify it with the right key only.
    let proof = dir.join("mem.proof");
    vmattest([
        "config",
        "disclose",
        s(&out),
        "--param",
        "memory_mib",
        "--out",
        s(&proof),
    ])
    .ok();
    let v = vmattest([
        "config",
        "verify-disclosure",
        s(&proof),
        "--pubkey",
        s(&k.pubkey),
    ])
    .ok();
    assert!(v.stdout.contains("memory_mib = 128"), "{}", v.stdout);
    assert!(
        v.stdout.contains(m["root"].as_str().unwrap()),
        "{}",
        v.stdout
    );
    let j = vmattest([
        "--json",
        "config",
        "verify-disclosure",
        s(&proof),
        "--pubkey",
        s(&k.pubkey),
    ])
    .ok()
    .json();
    assert_eq!(
        (j["name"].as_str(), j["value"].as_str()),
        (Some("memory_mib"), Some("128"))
    );
    assert_eq!(j["root"], m["root"]);
    // The proof reveals nothing of the other values.
    let bytes = std::fs::read(&proof).unwrap();
    let kernel = value(&shown, "kernel.sha256");
    assert!(!String::from_utf8_lossy(&bytes).contains(&kernel));

    vmattest([
        "config",
        "verify-disclosure",
        s(&proof),
        "--pubkey",
        s(&k.other_pub),
    ])
    .fails(1, "signature");

    // Any flipped byte fails: a flip that breaks the encoding is bad input (2), one that still
    // decodes fails verification (1).
    for at in [20, bytes.len() / 3, bytes.len() / 2, bytes.len() - 5] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        let f = dir.join("bad.proof");
        std::fs::write(&f, &bad).unwrap();
        let r = vmattest([
            "config",
            "verify-disclosure",
            s(&f),
            "--pubkey",
            s(&k.pubkey),
        ]);
        assert!(
            matches!(r.code, 1 | 2),
            "flip at {at}: {} {}",
            r.stdout,
            r.stderr
        );
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    }

    // A missing parameter is named, and nothing else is listed.
    let r = vmattest([
        "config",
        "disclose",
        s(&out),
        "--param",
        "firmware.sha256",
        "--out",
        s(&dir.join("x.proof")),
    ])
    .fails(2, "firmware.sha256");
    assert!(!r.stderr.contains("memory_mib"), "{}", r.stderr);
    assert!(!dir.join("x.proof").exists());

    // The local reference check.
    let reference = dir.join("ref.toml");
    reference_for(&out, &reference);
    vmattest(["config", "check", s(&out), "--reference", s(&reference)]).ok();
    let text = std::fs::read_to_string(&reference)
        .unwrap()
        .replace("memory_mib = 128", "memory_mib = 256");
    std::fs::write(&reference, text).unwrap();
    let r =
        vmattest(["config", "check", s(&out), "--reference", s(&reference)]).fails(1, "memory_mib");
    assert!(
        r.stdout.contains("memory_mib: expected = 256, found 128"),
        "{}",
        r.stdout
    );
}

#[test]
fn libvirt_xml_with_packages() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let k = keys(dir);
    let xml = write(
        dir,
        "web1.xml",
        format!(
            r#"<domain type="kvm"><name>web1</name><memory unit="MiB">256</memory><vcpu>2</vcpu>
<os><type arch="x86_64" machine="q35">hvm</type><kernel>{}</kernel></os>
<devices><interface type="network"><mac address="52:54:00:AA:bb:cc"/></interface></devices>
</domain>"#,
            guest_dir().join("vmlinuz").display()
        )
        .as_bytes(),
    );
    let manifest = write(
        dir,
        "packages.txt",
        b"openssh-server 1:9.2p1-2+deb12u3\nlibstdc++6 12.2.0-14\n",
    );
    let out = dir.join("cfg");
    let args = |name: Option<&str>| {
        let mut a = vec![
            "--json",
            "config",
            "measure",
            "--libvirt",
            s(&xml),
            "--packages",
            s(&manifest),
            "--key",
            s(&k.key),
            "--out",
            s(&out),
        ];
        if let Some(n) = name {
            a.extend(["--name", n]);
        }
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    // The statement names the domain's <name> unless --name overrides it.
    let m = vmattest(args(Some("other"))).ok().json();
    assert_eq!(m["vm"], "other");
    std::fs::remove_dir_all(&out).unwrap();
    let m = vmattest(args(None)).ok().json();
    assert_eq!(m["vm"], "web1");
    let shown = show(&out);
    assert_eq!(value(&shown, "machine"), "q35");
    assert_eq!(value(&shown, "memory_mib"), "256");
    assert_eq!(value(&shown, "nic.0.mac"), "52:54:00:aa:bb:cc");
    assert_eq!(value(&shown, "package.libstdc__6"), "12.2.0-14");
    // packages.sha256 is sha256sum of the sorted manifest.
    let sorted = write(
        dir,
        "sorted.txt",
        b"libstdc++6 12.2.0-14\nopenssh-server 1:9.2p1-2+deb12u3\n",
    );
    let sum = oracle("sha256sum", &[s(&sorted)]);
    assert_eq!(
        value(&shown, "packages.sha256"),
        sum.split_whitespace().next().unwrap()
    );
    // One package source at a time.
    let r = vmattest([
        "config",
        "measure",
        "--libvirt",
        s(&xml),
        "--packages",
        s(&manifest),
        "--dpkg-status",
        s(&manifest),
        "--key",
        s(&k.key),
        "--name",
        "web1",
        "--out",
        s(&dir.join("o2")),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--dpkg-status"), "{}", r.stderr);
}

fn status_running(spec: &Path) -> bool {
    vmattest(["--json", "vm", "status", "--vm", s(spec)])
        .ok()
        .json()["running"]
        .as_bool()
        .unwrap()
}

/// Stops the VM of `spec` when dropped.
struct Stop(PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = vmattest(["vm", "stop", "--vm", s(&self.0)]);
    }
}

/// `vm launch` of `spec` against `gate` (the reference or server arguments).
fn launch(spec: &Path, key: &Path, gate: &[&str], extra: &[&str]) -> Run {
    let mut args = vec![
        "vm".to_owned(),
        "launch".into(),
        "--vm".into(),
        s(spec).into(),
        "--key".into(),
        s(key).into(),
        "--timeout".into(),
        "180".into(),
    ];
    args.extend(gate.iter().map(|a| (*a).to_owned()));
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    vmattest(args)
}

/// Asserts that launching `spec` is refused naming `param`, and that nothing started.
fn refused(spec: &Path, key: &Path, gate: &[&str], param: &str) {
    let _stop = Stop(spec.to_path_buf());
    let r = launch(spec, key, gate, &["--wait-for", "READY"]).fails(1, param);
    assert!(r.stderr.contains("launch refused: "), "{}", r.stderr);
    assert!(
        !status_running(spec),
        "{} runs after a refusal",
        spec.display()
    );
    let run = spec.parent().unwrap().join(format!(
        "run-{}",
        spec.file_stem().unwrap().to_str().unwrap()
    ));
    assert!(!run.join("qemu.pid").exists(), "pid file after a refusal");
}

/// The variations that must each block the launch, with the parameter each must name.
fn variations(dir: &Path, base: &Cfg) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    let mut c = base.clone();
    c.memory = 256;
    out.push((c.write(dir, "mem"), "memory_mib"));
    let mut c = base.clone();
    c.vcpus = 4;
    out.push((c.write(dir, "cpus"), "vcpus"));
    let mut c = base.clone();
    c.cmdline = format!("{CMDLINE} init=/bin/sh");
    out.push((c.write(dir, "cmd"), "cmdline"));
    let mut c = base.clone();
    let mut kernel = std::fs::read(&base.kernel).unwrap();
    let n = kernel.len();
    kernel[n / 2] ^= 0x01;
    c.kernel = write(dir, "vmlinuz-flipped", &kernel);
    out.push((c.write(dir, "kern"), "kernel.sha256"));
    let mut c = base.clone();
    let mut disk = std::fs::read(&base.disk).unwrap();
    disk[4096 * 3 + 7] ^= 0x01;
    c.disk = write(dir, "disk0-changed.raw", &disk);
    out.push((c.write(dir, "disk"), "disk.disk0.root"));
    let mut c = base.clone();
    c.machine = "q35";
    out.push((c.write(dir, "mach"), "machine"));
    let mut c = base.clone();
    c.mac = "52:54:00:12:34:57";
    out.push((c.write(dir, "nic"), "nic.0.mac"));
    out
}

#[test]
fn launch_gate_with_a_local_reference() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let k = keys(dir);
    let base = Cfg::new(dir);
    let good = base.write(dir, "good");
    let reference = dir.join("ref.toml");
    let measured = dir.join("measured");
    measure(&good, &k.key, &measured);
    reference_for(&measured, &reference);
    let packages = manifest(dir, "pkgs.txt", "1:1.35.0-4+b3");
    let gate = ["--reference", s(&reference), "--packages", s(&packages)];

    // The refusals first: the guest writes to its disk once it runs.
    for (spec, param) in variations(dir, &base) {
        refused(&spec, &k.key, &gate, param);
    }
    let other = manifest(dir, "pkgs-other.txt", "1:1.36.1-1");
    let gate_other = ["--reference", s(&reference), "--packages", s(&other)];
    refused(&good, &k.key, &gate_other, "packages.sha256");

    {
        let _stop = Stop(good.clone());
        let kept = dir.join("kept");
        let r = launch(
            &good,
            &k.key,
            &gate,
            &["--wait-for", "READY", "--out", s(&kept), "--json"],
        )
        .ok()
        .json();
        assert_eq!(r["checked"], "local", "{r}");
        assert!(status_running(&good));
        // The kept measurement is the one that was checked.
        assert_eq!(show(&kept)["root"], r["root"]);
        vmattest(["vm", "stop", "--vm", s(&good)]).ok();
        assert!(!status_running(&good));
    }
}

/// Registers host `h1` (agent key `key.pub`), a policy and VM `name` on `server`; returns the
/// admin and agent token files.
fn register(server: &server::Server, dir: &Path, k: &Keys, names: &[&str]) -> (PathBuf, PathBuf) {
    use vmattest_api::Role;
    use vmattest_client::Client;

    let admin = server.admin_token();
    server
        .remote(
            &admin,
            &["host", "add", "--name", "h1", "--pubkey", s(&k.pubkey)],
        )
        .ok();
    let c = Client::new(&server.url(), Some(admin.clone())).unwrap();
    server::register_vms(&c, "h1", names);
    let agent = server::token(&c, Role::Agent, Some("h1"));
    let admin_file = write(dir, "admin.token", admin.as_bytes());
    let agent_file = write(dir, "agent.token", agent.as_bytes());
    (admin_file, agent_file)
}

#[test]
fn launch_gate_through_a_server() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let k = keys(dir);
    let base = Cfg::new(dir);
    let good = base.write(dir, "sgood");
    let mut c = base.clone();
    c.memory = 256;
    let bad = c.write(dir, "sbad");
    let reference = dir.join("ref.toml");
    let measured = dir.join("measured");
    measure(&good, &k.key, &measured);
    reference_for(&measured, &reference);

    let server = server::Server::start(&dir.join("state"), None);
    let (admin, agent) = register(&server, dir, &k, &["sgood", "sbad"]);
    let url = server.url();
    for vm in ["sgood", "sbad"] {
        vmattest([
            "config",
            "push-reference",
            "--server",
            &url,
            "--token-file",
            s(&admin),
            "--vm",
            vm,
            "--reference",
            s(&reference),
        ])
        .ok();
    }
    // An agent token may not set a reference.
    vmattest([
        "config",
        "push-reference",
        "--server",
        &url,
        "--token-file",
        s(&agent),
        "--vm",
        "sgood",
        "--reference",
        s(&reference),
    ])
    // The server denies the caller's role: exit 4.
    .fails(4, "server refused");

    let packages = manifest(dir, "pkgs.txt", "1:1.35.0-4+b3");
    let gate = [
        "--server",
        &url,
        "--token-file",
        s(&agent),
        "--packages",
        s(&packages),
    ];
    // The server's EAR key, pinned, and another server's.
    let ear_key = |url: &str, name: &str| {
        let out = vmattest([
            "remote",
            "--server",
            url,
            "--token-file",
            s(&agent),
            "ear-key",
            "--json",
        ])
        .ok()
        .stdout;
        write(dir, name, out.as_bytes())
    };
    let pinned = ear_key(&url, "ear-key.json");
    let foreign = {
        let other = server::Server::start(&dir.join("state2"), None);
        ear_key(&other.url(), "foreign-ear-key.json")
    };
    let signed_gate: Vec<&str> = gate
        .iter()
        .copied()
        .chain(["--server-key", s(&pinned)])
        .collect();
    let foreign_gate: Vec<&str> = gate
        .iter()
        .copied()
        .chain(["--server-key", s(&foreign)])
        .collect();

    // The refusals first: the guest writes to its disk once it runs.
    refused(&bad, &k.key, &gate, "memory_mib");
    refused(&bad, &k.key, &signed_gate, "memory_mib");
    // A statement signed by a key the server does not know for the host is refused too.
    let other_key = dir.join("other");
    launch(&good, &other_key, &gate, &[]).fails(1, "unknown_key");
    // A verdict that does not verify under the pinned key starts nothing.
    let r =
        launch(&good, &k.key, &foreign_gate, &[]).fails(1, "does not verify under the pinned key");
    assert!(
        r.stderr.contains("launch refused: the server's verdict"),
        "{}",
        r.stderr
    );
    assert!(!status_running(&good));
    {
        let _stop = Stop(good.clone());
        let r = launch(
            &good,
            &k.key,
            &signed_gate,
            &["--wait-for", "READY", "--json"],
        )
        .ok()
        .json();
        assert_eq!(r["checked"], "server", "{r}");
        assert!(status_running(&good));
    }
}
