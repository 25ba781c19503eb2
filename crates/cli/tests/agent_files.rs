//! `vmattest policy ...` and the file-only paths of `agent`, `attest` and `remote`: no server,
//! no QEMU.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;

const MAP: &str = "ffffffff81000000 T _text\nffffffff81001000 T _stext\nffffffff81a00123 T _etext\nffffffff82000000 D sys_call_table\nffffffff82000800 D sys_call_table_end\n";

const POLICY: &str = r#"
name = "kernel"
hash = "sha256"
schedule_secs = 30
kernel_load = 0x1000000

[[region]]
name = "text"
symbols = ["_stext", "_etext"]
weight = 10
critical = true
kernel_code = true

[[region]]
name = "syscalls"
symbols = ["sys_call_table", "sys_call_table_end"]

[[region]]
name = "low"
start = 0x1000
len = 0x3000
sample = 2

[[subset]]
id = "code"
regions = ["text", "syscalls"]
"#;

#[test]
fn policy_resolve_turns_symbols_into_ranges_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.toml", POLICY.as_bytes());
    let map = write(dir.path(), "System.map", MAP.as_bytes());
    let text = vmattest([
        "policy",
        "resolve",
        "--policy",
        s(&policy),
        "--system-map",
        s(&map),
    ])
    .ok()
    .stdout;
    // _stext is 0x1000 after _text, which is loaded at 0x1000000; _etext rounds up a page.
    assert!(text.contains("start = 0x1001000"), "{text}");
    assert!(text.contains("len = 0xa00000"), "{text}");
    assert!(text.contains("start = 0x2000000"), "{text}");
    assert!(!text.contains("symbols"), "{text}");
    assert!(text.contains("id = \"all\""), "{text}");

    let j = vmattest([
        "policy",
        "resolve",
        "--json",
        "--policy",
        s(&policy),
        "--system-map",
        s(&map),
    ])
    .ok()
    .json();
    assert_eq!(j["name"], "kernel");
    assert_eq!(j["toml"], text);
    let id = j["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 64);

    // The resolved policy needs no System.map and has the same id.
    let resolved = write(dir.path(), "resolved.toml", text.as_bytes());
    let again = vmattest(["policy", "id", "--policy", s(&resolved)]).ok();
    assert_eq!(again.stdout.trim(), id);
    let again = vmattest(["policy", "resolve", "--policy", s(&resolved)]).ok();
    assert_eq!(again.stdout, text);
    let j = vmattest(["policy", "id", "--json", "--policy", s(&resolved)])
        .ok()
        .json();
    assert_eq!(j["id"], id.as_str());
}

#[test]
fn a_bad_policy_is_one_error_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let map = write(dir.path(), "System.map", MAP.as_bytes());
    let cases: [(&str, String, &str); 5] = [
        ("hash", POLICY.replace("sha256", "md5"), "md5"),
        (
            "region low.sample",
            POLICY.replace("sample = 2", "sample = 9"),
            "9",
        ),
        (
            "region low.weight",
            POLICY.replace("len = 0x3000", "len = 0x3000\nweight = 0"),
            "weight",
        ),
        ("bogus", POLICY.replace("schedule_secs", "bogus"), "bogus"),
        (
            "subset code.regions",
            POLICY.replace("[\"text\", \"syscalls\"]", "[\"nope\"]"),
            "nope",
        ),
    ];
    for (field, text, found) in cases {
        let policy = write(dir.path(), "bad.toml", text.as_bytes());
        vmattest([
            "policy",
            "resolve",
            "--policy",
            s(&policy),
            "--system-map",
            s(&map),
        ])
        .fails(2, field)
        .fails(2, found)
        .fails(2, "bad.toml");
    }
    // Symbols need a System.map, and every symbol must be in it.
    let policy = write(dir.path(), "policy.toml", POLICY.as_bytes());
    vmattest(["policy", "id", "--policy", s(&policy)]).fails(2, "System.map");
    let short = write(dir.path(), "short.map", b"ffffffff81000000 T _text\n");
    vmattest([
        "policy",
        "id",
        "--policy",
        s(&policy),
        "--system-map",
        s(&short),
    ])
    .fails(2, "_stext");
    let broken = write(
        dir.path(),
        "broken.map",
        b"ffffffff81000000 T _text\nnot a line\n",
    );
    vmattest([
        "policy",
        "id",
        "--policy",
        s(&policy),
        "--system-map",
        s(&broken),
    ])
    .fails(2, "line 2");
    vmattest(["policy", "id", "--policy", s(&dir.path().join("none.toml"))]).fails(2, "none.toml");
}

#[test]
fn remote_and_agent_refuse_bad_input_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    vmattest(["remote", "host", "list"]).fails(2, "--server");
    vmattest(["remote", "--server", "ftp://x", "health"]).fails(2, "ftp://x");
    let empty = write(dir.path(), "token", b"\n");
    vmattest([
        "remote",
        "--server",
        "http://127.0.0.1:9",
        "--token-file",
        s(&empty),
        "host",
        "list",
    ])
    .fails(2, "token");
    // Nothing listens on the discard port: a transport error, on one line.
    // An unreachable server is the environment's failure (exit 3), named on one line.
    vmattest(["remote", "--server", "http://127.0.0.1:9", "health"]).fails(3, "127.0.0.1:9");
    let token = write(dir.path(), "token2", b"abc\n");
    vmattest([
        "remote",
        "--server",
        "http://127.0.0.1:9",
        "--token-file",
        s(&token),
        "vm",
        "show",
        "../x",
    ])
    .fails(2, "../x");
    vmattest([
        "remote",
        "--server",
        "http://127.0.0.1:9",
        "--token-file",
        s(&token),
        "token",
        "--role",
        "root",
    ])
    .fails(2, "root");
    // A policy that still has symbols is refused locally.
    let policy = write(dir.path(), "policy.toml", POLICY.as_bytes());
    vmattest([
        "remote",
        "--server",
        "http://127.0.0.1:9",
        "--token-file",
        s(&token),
        "policy",
        "add",
        "--policy",
        s(&policy),
    ])
    .fails(2, "System.map");
    // The agent needs its VM spec.
    let key = dir.path().join("agent.key");
    vmattest(["keygen", "--alg", "ed25519", "--out", s(&key)]).ok();
    vmattest([
        "agent",
        "--server",
        "http://127.0.0.1:9",
        "--token-file",
        s(&token),
        "--key",
        s(&key),
        "--vm",
        s(&dir.path().join("missing.toml")),
        "--once",
    ])
    .fails(2, "missing.toml");
}

/// One QMP command on the guest's socket (the session is closed afterwards).
fn qmp(g: &guest::Guest, command: &str) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let stream = std::os::unix::net::UnixStream::connect(g.dir.join("qmp.sock")).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap(); // greeting
    for c in ["qmp_capabilities", command] {
        writeln!(&stream, "{{\"execute\":\"{c}\"}}").unwrap();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert!(!line.contains("\"error\""), "{c}: {line}");
            if line.contains("\"return\"") {
                break;
            }
        }
    }
}

#[test]
fn attest_snapshot_compares_a_real_guest_with_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let g = guest::Guest::new(dir.path(), "att1");
    g.start();
    let key = dir.path().join("key");
    vmattest(["keygen", "--alg", "ed25519", "--out", s(&key)]).ok();
    let pubkey = dir.path().join("key.pub");
    let store = dir.path().join("store");
    vmattest(["snapshot", "init", "--store", s(&store), "--vm-id", "att1"]).ok();
    // Paused, the guest stays paused through the take and the comparison: everything matches.
    qmp(&g, "stop");
    vmattest([
        "snapshot",
        "take",
        "--store",
        s(&store),
        "--vm",
        g.arg(),
        "--key",
        s(&key),
    ])
    .ok();
    let attest = |extra: &[&str]| {
        let mut args = vec![
            "attest",
            "snapshot",
            "--store",
            s(&store),
            "--pubkey",
            s(&pubkey),
            "--seq",
            "0",
            "--vm",
            g.arg(),
            "--key",
            s(&key),
        ];
        args.extend_from_slice(extra);
        vmattest(args)
    };
    let report = dir.path().join("report");
    let j = attest(&["--json", "--nonce", "00112233", "--out", s(&report)])
        .ok()
        .json();
    assert_eq!(j["verdict"], "match");
    assert_eq!(component_names(&j), ["ram", "disk0", "config"]);
    let signed =
        vmattest_core::attest::SignedSnapshotReport::decode(&std::fs::read(&report).unwrap())
            .unwrap();
    let pk = vmattest_sign::keyfile::read_public_key(&pubkey).unwrap();
    vmattest_sign::record::verify_signed(&signed, &[pk]).unwrap();
    assert!(signed.value().matches());
    assert_eq!(signed.value().nonce, [0x00, 0x11, 0x22, 0x33]);
    assert_eq!(signed.value().vm, "att1");
    let text = attest(&[]).ok().stdout;
    assert!(text.contains("Match     ram"), "{text}");
    // Still stopped (after the take's migration, `postmigrate`): the comparison resumed nothing.
    let st = vmattest(["--json", "vm", "status", "--vm", g.arg()])
        .ok()
        .json();
    assert_ne!(st["qemu_status"], "running");

    // Running on, the guest's RAM no longer matches; the guest runs after the comparison.
    qmp(&g, "cont");
    let before = g.next_tick(None);
    let r = attest(&[]).fails(1, "differs from seq 0 in ram");
    assert!(r.stdout.contains("Mismatch  ram"), "{}", r.stdout);
    assert!(r.stdout.contains("Match     config"), "{}", r.stdout);
    g.next_tick(Some(before));
    let st = vmattest(["--json", "vm", "status", "--vm", g.arg()])
        .ok()
        .json();
    assert_eq!(st["qemu_status"], "running");
    // The agent rolls the guest back to seq 0 when the server's result asks for it.
    let url = stub_server(
        "att1",
        SMALL_POLICY,
        (200, result_json("att1", 0, true, Some(0))),
    );
    let token = write(dir.path(), "token", b"t\n");
    let r = vmattest([
        "agent",
        "--server",
        &url,
        "--token-file",
        s(&token),
        "--key",
        s(&key),
        "--vm",
        g.arg(),
        "--once",
        "--paused",
        "--store",
        s(&store),
        "--pubkey",
        s(&pubkey),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.contains("rolled back to seq 0"), "{}", r.stdout);
    let st = vmattest(["--json", "vm", "status", "--vm", g.arg()])
        .ok()
        .json();
    assert_eq!(st["qemu_status"], "running");
    // A chain that does not verify against the pinned key fails (exit 1, as `snapshot verify`)
    // before the VM is touched.
    let other = dir.path().join("other");
    vmattest(["keygen", "--alg", "ed25519", "--out", s(&other)]).ok();
    vmattest([
        "attest",
        "snapshot",
        "--store",
        s(&store),
        "--pubkey",
        s(&dir.path().join("other.pub")),
        "--seq",
        "0",
        "--vm",
        g.arg(),
        "--key",
        s(&key),
    ])
    .fails(1, "expected signatures by the keys in force at this seq");
}

/// A stub server: challenges for VM `vm` under `policy` (resolved TOML), and `answer` (status,
/// JSON) to every evidence. Returns its URL.
fn stub_server(vm: &str, policy: &str, answer: (u16, String)) -> String {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let p = vmattest_core::attest::Policy::parse(policy, None).unwrap();
    let challenge = serde_json::json!({
        "vm": vm, "nonce": "ab".repeat(32), "policy_id": p.id().to_hex(),
        "policy_toml": p.to_toml(), "subset": "all", "expires": "1970-01-01T00:00:00Z",
    })
    .to_string();
    let challenge_path = format!("POST /v1/vms/{vm}/challenge ");
    let vm = vm.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            let mut len = 0usize;
            let mut line = String::new();
            reader.read_line(&mut request).unwrap();
            while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                line.clear();
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let (status, text) = if request.starts_with(&challenge_path) {
                (200, challenge.clone())
            } else if request.starts_with("POST /v1/evidence ") {
                answer.clone()
            } else if request.starts_with(&format!("GET /v1/vms/{vm}/snapshot-requests ")) {
                (200, "[]".to_owned())
            } else {
                (404, r#"{"code":"not_found","error":"no route"}"#.to_owned())
            };
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    url
}

fn result_json(vm: &str, score: u8, alert: bool, rollback: Option<u64>) -> String {
    serde_json::json!({
        "id": 7, "vm": vm, "time": "1970-01-01T00:00:00Z", "score": score,
        "status": if alert { "contraindicated" } else { "affirming" },
        "trust_vector": {}, "regions": [{"name": "low", "matched": !alert, "weight": 1, "critical": false}],
        "alert": alert, "rollback_seq": rollback, "ear": "",
    })
    .to_string()
}

const SMALL_POLICY: &str = "name = \"small\"\nschedule_secs = 1\n[[region]]\nname = \"low\"\nstart = 0x1000\nlen = 0x2000\n";

#[test]
fn agent_once_exits_by_the_servers_answer() {
    let dir = tempfile::tempdir().unwrap();
    // A VM that is not running: its RAM file is read without pausing anything.
    let spec = write(
        dir.path(),
        "web1.toml",
        b"name = \"web1\"\nmemory_mib = 16\nrun_dir = \"run\"\n[boot]\nkernel = \"k\"\n",
    );
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    write(&dir.path().join("run"), "ram", &vec![3u8; 16 * PAGE]);
    let key = dir.path().join("agent.key");
    vmattest(["keygen", "--alg", "ed25519", "--out", s(&key)]).ok();
    let token = write(dir.path(), "token", b"secret-token\n");
    let agent = |url: &str, extra: &[&str]| {
        let mut args = vec![
            "agent",
            "--server",
            url,
            "--token-file",
            s(&token),
            "--key",
            s(&key),
            "--vm",
            s(&spec),
            "--once",
        ];
        args.extend_from_slice(extra);
        vmattest(args)
    };

    let url = stub_server(
        "web1",
        SMALL_POLICY,
        (200, result_json("web1", 100, false, None)),
    );
    let out = agent(&url, &[]).ok().stdout;
    assert!(out.contains("web1 round 1: score 100 (affirming)"), "{out}");
    let j = agent(&url, &["--json"]).ok().json();
    assert_eq!(j["round"], 1);
    assert_eq!(j["score"], 100);

    let url = stub_server(
        "web1",
        SMALL_POLICY,
        (200, result_json("web1", 0, true, None)),
    );
    let r = agent(&url, &[]).fails(1, "alert");
    assert!(r.stdout.contains("ALERT"), "{}", r.stdout);
    // A rollback asked for without --store is reported, not done.
    let url = stub_server(
        "web1",
        SMALL_POLICY,
        (200, result_json("web1", 0, true, Some(0))),
    );
    let r = agent(&url, &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no --store"), "{}", r.stderr);

    let refused = r#"{"code":"stale","error":"evidence time is outside the window"}"#;
    let url = stub_server("web1", SMALL_POLICY, (400, refused.to_owned()));
    // Evidence the server's appraisal refused (stale) is a failed check: exit 1.
    agent(&url, &[]).fails(
        1,
        "server refused (400 stale): evidence time is outside the window",
    );
    // A challenge for another name than the VM's on the server is refused.
    let url = stub_server(
        "web2",
        SMALL_POLICY,
        (200, result_json("web2", 100, false, None)),
    );
    agent(&url, &["--name", "web2"]).ok();
    agent(&url, &[]).fails(2, "404 not_found");
    // A region beyond the VM's RAM names the region.
    let big = "name = \"big\"\n[[region]]\nname = \"high\"\nstart = 0x2000000\nlen = 0x1000\n";
    let url = stub_server("web1", big, (200, result_json("web1", 100, false, None)));
    agent(&url, &[]).fails(2, "region high at 0x2000000");
}
