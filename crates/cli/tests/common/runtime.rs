//! Runtime attestation set up for a real guest: a kernel policy from the symbols the test
//! guest prints, a chain with its baseline snapshot, and a server that knows the host, the
//! policy, the VM (rollback on alert, a webhook) and the golden baseline from seq 0.

use std::path::{Path, PathBuf};

use super::server::{Server, Webhook};
use super::{Run, vmattest};

pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// System.map lines and the physical address of `_text`, from what the guest printed.
fn guest_symbols(console: &str) -> (String, u64) {
    let map: Vec<String> = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ksym "))
        .map(str::to_string)
        .collect();
    assert!(
        map.len() >= 3,
        "no kernel symbols on the console: {console}"
    );
    let load = console
        .lines()
        .find_map(|l| l.trim().strip_prefix("kcode "))
        .and_then(|r| r.split('-').next())
        .map(|a| u64::from_str_radix(a, 16).unwrap())
        .expect("kcode line");
    (map.join("\n") + "\n", load)
}

/// Offset in the RAM file of a byte of int3 padding inside kernel text: never executed, so
/// changing it cannot crash the guest, yet it is kernel code to any measurement.
fn padding_byte(ram: &[u8], start: usize, end: usize) -> usize {
    let text = &ram[start..end];
    let run = text
        .windows(32)
        .position(|w| w.iter().all(|b| *b == 0xcc))
        .expect("a run of int3 padding in kernel text");
    start + run + 16
}

/// A guest under runtime attestation.
pub struct Attested {
    pub server: Server,
    pub hook: Webhook,
    pub admin: String,
    pub dir: PathBuf,
    pub store: PathBuf,
    /// The resolved policy (TOML).
    pub resolved: String,
    token_file: PathBuf,
    /// `--vm SPEC` or `--domain NAME --connect URI`.
    guest: Vec<String>,
}

/// `sys_call_table` of the test guest's x86-64 kernel: 451 entries of 8 bytes.
pub const SYSCALL_TABLE_BYTES: u64 = 451 * 8;

/// Writes System.map, policy.toml and resolved.toml in `dir` for the test guest whose console
/// printed `console`; returns the resolved policy.
pub fn write_policy(dir: &Path, console: &str) -> String {
    let (map, load) = guest_symbols(console);
    std::fs::write(dir.join("System.map"), map).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        format!(
            r#"name = "guest-kernel"
hash = "sha256"
schedule_secs = 2
kernel_load = {load:#x}

[jump_table]
symbols = ["__start___jump_table", "__stop___jump_table"]

[static_calls]
sites = ["__start_static_call_sites", "__stop_static_call_sites"]
trampolines = ["__static_call_text_start", "__static_call_text_end"]

[[region]]
name = "kernel-text"
symbols = ["_stext", "_etext"]
weight = 10
critical = true
kernel_code = true

[[region]]
name = "rodata"
symbols = ["__start_rodata", "__end_rodata"]
weight = 2
critical = true

[[region]]
name = "syscalls"
symbol = "sys_call_table"
len = {SYSCALL_TABLE_BYTES}
weight = 2
critical = true

[[region]]
name = "idt"
symbol = "idt_table"
len = 4096
weight = 2
critical = true
"#
        ),
    )
    .unwrap();
    let resolved = vmattest([
        "policy",
        "resolve",
        "--policy",
        &s(&dir.join("policy.toml")),
        "--system-map",
        &s(&dir.join("System.map")),
    ])
    .ok()
    .stdout;
    std::fs::write(dir.join("resolved.toml"), &resolved).unwrap();
    resolved
}

/// `host.key` (evidence) and `chain.key` (links) in `dir`.
pub fn write_keys(dir: &Path) {
    for k in ["host.key", "chain.key"] {
        vmattest(["keygen", "--alg", "ed25519", "--out", &s(&dir.join(k))]).ok();
    }
}

/// A new store for `vm` with its baseline (seq 0) taken now from the guest of `guest`
/// arguments, signed by `dir/chain.key`.
pub fn baseline_chain(dir: &Path, store: &Path, vm: &str, guest: &[&str]) {
    let st = s(store);
    vmattest([
        "snapshot", "init", "--store", &st, "--vm-id", vm, "--alg", "sha256",
    ])
    .ok();
    let mut take = vec!["snapshot", "take", "--store", &st];
    take.extend_from_slice(guest);
    let key = s(&dir.join("chain.key"));
    take.extend(["--key", &key]);
    vmattest(take).ok();
}

/// Registers `dir/host.key.pub` as host1 and `dir/resolved.toml`; returns the policy id.
pub fn register_host_and_policy(server: &Server, admin: &str, dir: &Path) -> String {
    let host_pub = s(&dir.join("host.key.pub"));
    server
        .remote(
            admin,
            &["host", "add", "--name", "host1", "--pubkey", &host_pub],
        )
        .ok();
    let policy = server
        .remote(
            admin,
            &[
                "--json",
                "policy",
                "add",
                "--policy",
                &s(&dir.join("resolved.toml")),
            ],
        )
        .ok()
        .json();
    policy["id"].as_str().unwrap().to_string()
}

/// Registers VM `vm` on host1 (threshold 90, `extra` options) and its baseline from seq 0 of
/// `store`, verified with `dir/chain.key.pub`.
pub fn register_vm(
    server: &Server,
    admin: &str,
    dir: &Path,
    vm: &str,
    policy_id: &str,
    store: &Path,
    extra: &[&str],
) {
    let mut add = vec![
        "vm",
        "add",
        "--name",
        vm,
        "--host",
        "host1",
        "--policy-id",
        policy_id,
        "--subset",
        "all",
        "--threshold",
        "90",
    ];
    add.extend_from_slice(extra);
    server.remote(admin, &add).ok();
    server
        .remote(
            admin,
            &[
                "baseline",
                "--vm",
                vm,
                "--store",
                &s(store),
                "--seq",
                "0",
                "--policy",
                &s(&dir.join("resolved.toml")),
                "--pubkey",
                &s(&dir.join("chain.key.pub")),
            ],
        )
        .ok();
}

/// A new agent token for host1, written to `dir/agent.token`.
pub fn agent_token(server: &Server, admin: &str, dir: &Path) -> PathBuf {
    let token = server
        .remote(
            admin,
            &["--json", "token", "--role", "agent", "--host", "host1"],
        )
        .ok()
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, &token).unwrap();
    token_file
}

impl Attested {
    /// Sets up VM `vm` (known to vmattest by `guest` arguments) whose console printed
    /// `console`: its chain's baseline is taken now.
    pub fn set_up(dir: &Path, vm: &str, console: &str, guest: &[&str]) -> Attested {
        let resolved = write_policy(dir, console);
        write_keys(dir);
        let store = dir.join("store");
        baseline_chain(dir, &store, vm, guest);
        let server = Server::start(&dir.join("state"), None);
        let hook = Webhook::start();
        let admin = server.admin_token();
        let secret = dir.join("hook.secret");
        std::fs::write(&secret, "a-webhook-secret-of-some-length").unwrap();
        let policy_id = register_host_and_policy(&server, &admin, dir);
        register_vm(
            &server,
            &admin,
            dir,
            vm,
            &policy_id,
            &store,
            &[
                "--webhook-url",
                &hook.url,
                "--webhook-secret-file",
                &s(&secret),
                "--on-alert",
                "rollback",
            ],
        );
        let token_file = agent_token(&server, &admin, dir);
        Attested {
            server,
            hook,
            admin,
            dir: dir.to_path_buf(),
            store,
            resolved,
            token_file,
            guest: guest.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    /// One agent round (`--once`), with `extra` arguments.
    pub fn agent(&self, extra: &[&str]) -> Run {
        let mut once = vec!["--once"];
        once.extend_from_slice(extra);
        self.agent_rounds(&once)
    }

    /// The agent, with `extra` arguments (`--count N`, `--interval S`, ...).
    pub fn agent_rounds(&self, extra: &[&str]) -> Run {
        let mut args = vec![
            "--json".to_string(),
            "agent".into(),
            "--server".into(),
            self.server.url(),
            "--token-file".into(),
            s(&self.token_file),
            "--key".into(),
            s(&self.dir.join("host.key")),
        ];
        args.extend(self.guest.iter().cloned());
        args.extend(extra.iter().map(|a| (*a).to_string()));
        vmattest(args)
    }

    /// One agent round that may roll the guest back from the chain.
    pub fn agent_with_store(&self) -> Run {
        self.agent(&[
            "--store",
            &s(&self.store),
            "--pubkey",
            &s(&self.dir.join("chain.key.pub")),
        ])
    }

    /// Changes one never-executed byte of kernel text in the guest RAM file `ram_path`.
    pub fn patch_kernel(&self, ram_path: &Path) {
        patch_kernel_text(&self.resolved, ram_path);
    }
}

/// Changes one never-executed byte of the kernel text that the `resolved` policy names, in
/// the guest RAM file `ram_path`.
pub fn patch_kernel_text(resolved: &str, ram_path: &Path) {
    poke(ram_path, padding_addr(resolved, ram_path), &[0x90]);
}

/// The guest-physical address of a never-executed byte (int3 padding) of the kernel text that
/// the `resolved` policy names.
pub fn padding_addr(resolved: &str, ram_path: &Path) -> u64 {
    let text = vmattest_core::attest::Policy::parse(resolved, None).unwrap();
    let region = text.region("kernel-text").unwrap().clone();
    let ram = std::fs::read(ram_path).unwrap();
    padding_byte(
        &ram,
        usize::try_from(region.start.0).unwrap(),
        usize::try_from(region.end()).unwrap(),
    ) as u64
}

/// Every JSON line of a run's standard output.
pub fn json_lines(run: &Run) -> Vec<serde_json::Value> {
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The jump-label sites of the `resolved` policy's regions in the guest RAM file `ram_path`,
/// from the guest's own jump table, with the bytes each holds now.
pub fn live_sites(
    resolved: &str,
    ram_path: &Path,
) -> Vec<(vmattest_core::attest::PatchSite, Vec<u8>)> {
    let policy = vmattest_core::attest::Policy::parse(resolved, None).unwrap();
    let ram = std::fs::read(ram_path).unwrap();
    let sites = vmattest_agent::patch_sites(&ram, &policy).unwrap();
    sites
        .into_iter()
        .map(|s| {
            let at = usize::try_from(s.addr.0).unwrap();
            (s, ram[at..at + usize::from(s.len)].to_vec())
        })
        .collect()
}

/// Writes `bytes` at guest-physical `addr` of the guest RAM file `ram_path`; returns the bytes
/// that were there.
pub fn poke(ram_path: &Path, addr: u64, bytes: &[u8]) -> Vec<u8> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(ram_path)
        .unwrap();
    let mut old = vec![0u8; bytes.len()];
    f.read_exact_at(&mut old, addr).unwrap();
    f.write_all_at(bytes, addr).unwrap();
    old
}
