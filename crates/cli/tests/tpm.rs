//! `vmattest tpm ...` against a private swtpm per test (feature `tpm`), and the clear error
//! without a TPM (any build).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::Run;

fn vmattest_env(tcti: Option<&str>, args: &[&str]) -> Run {
    vmattest_with(tcti, &[], args)
}

fn vmattest_with(tcti: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmattest"));
    cmd.args(args).env_remove("VMATTEST_TPM_TCTI");
    if let Some(t) = tcti {
        cmd.env("VMATTEST_TPM_TCTI", t);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn no_tpm_is_a_clear_error() {
    if Path::new("/dev/tpmrm0").exists() {
        return;
    }
    let r = vmattest_env(None, &["tpm", "info"]);
    let needle = if cfg!(feature = "tpm") {
        "VMATTEST_TPM_TCTI"
    } else {
        "built without TPM support"
    };
    // No usable TPM is the environment's failure.
    r.fails(3, needle);
}

#[cfg(feature = "tpm")]
mod with_swtpm {
    use std::os::unix::fs::PermissionsExt as _;

    use vmattest_testkit::Swtpm;

    use super::*;

    /// `tpm verify-quote`, which needs no TPM.
    fn verify_quote(quote: &str, ak: &str, nonce: &str) -> Run {
        vmattest_env(
            None,
            &[
                "--json",
                "tpm",
                "verify-quote",
                quote,
                "--ak",
                ak,
                "--nonce",
                nonce,
            ],
        )
    }

    #[test]
    fn quote_verifies_with_the_pinned_ak_only() {
        let tpm = Swtpm::start();
        let t = Some(tpm.tcti());
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
        vmattest_env(t.as_deref(), &["tpm", "ak", "--out", &p("ak")]).ok();
        std::fs::write(p("hv"), b"qemu-system-x86_64 build").unwrap();
        vmattest_env(
            t.as_deref(),
            &["tpm", "extend", "--pcr", "16", "--file", &p("hv")],
        )
        .ok();
        vmattest_env(
            t.as_deref(),
            &[
                "tpm",
                "quote",
                "--pcr",
                "0,16",
                "--nonce",
                "c0ffee",
                "--out",
                &p("q"),
            ],
        )
        .ok();
        // Verification needs no TPM.
        let ok = verify_quote(&p("q"), &p("ak"), "c0ffee").ok();
        assert_eq!(ok.json()["pcrs"], serde_json::json!([0, 16]));
        verify_quote(&p("q"), &p("ak"), "c0ffef").fails(1, "nonce");
        // A changed PCR value in the file no longer matches the signed digest.
        let text = std::fs::read_to_string(p("q")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let pcr16 = v["pcrs"][1]["sha256"].as_str().unwrap().to_owned();
        let forged = text.replace(&pcr16, &"11".repeat(32));
        std::fs::write(p("forged"), forged).unwrap();
        verify_quote(&p("forged"), &p("ak"), "c0ffee").fails(1, "PCR digest");
    }

    #[test]
    fn unseal_follows_the_pcrs() {
        let tpm = Swtpm::start();
        let t = Some(tpm.tcti());
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
        std::fs::write(p("secret"), [7u8; 32]).unwrap();
        std::fs::write(p("hv"), b"hypervisor").unwrap();
        vmattest_env(
            t.as_deref(),
            &[
                "tpm",
                "seal",
                "--pcr",
                "16",
                "--in",
                &p("secret"),
                "--out",
                &p("blob"),
            ],
        )
        .ok();
        vmattest_env(
            t.as_deref(),
            &["tpm", "unseal", &p("blob"), "--out", &p("out")],
        )
        .ok();
        assert_eq!(std::fs::read(p("out")).unwrap(), [7u8; 32]);
        let mode = std::fs::metadata(p("out")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        vmattest_env(
            t.as_deref(),
            &["tpm", "extend", "--pcr", "16", "--file", &p("hv")],
        )
        .ok();
        vmattest_env(
            t.as_deref(),
            &["tpm", "unseal", &p("blob"), "--out", &p("out2")],
        )
        .fails(1, "PCR 16 differs");
        assert!(!Path::new(&p("out2")).exists());
    }

    /// A chain signed by the TPM-resident key verifies with its exported public key alone.
    #[test]
    fn tpm_signed_chain_verifies_with_public_data_only() {
        let tpm = Swtpm::start();
        let t = Some(tpm.tcti());
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
        let k = vmattest_env(
            t.as_deref(),
            &["--json", "tpm", "keygen", "--out", &p("tpm.pub")],
        )
        .ok();
        assert_eq!(k.json()["alg"], "p384");
        vmattest_env(
            None,
            &["snapshot", "init", "--store", &p("s"), "--vm-id", "t"],
        )
        .ok();
        let mut mem = common::vm_like(64 * common::PAGE, 1);
        for round in 0..3u8 {
            mem[round as usize * 4096] ^= 0xff;
            std::fs::write(p("mem"), &mem).unwrap();
            vmattest_env(
                t.as_deref(),
                &[
                    "snapshot",
                    "take",
                    "--store",
                    &p("s"),
                    "--signer",
                    "tpm",
                    "--memory",
                    &p("mem"),
                ],
            )
            .ok();
        }
        vmattest_env(t.as_deref(), &["tpm", "ak", "--out", &p("ak")]).ok();
        drop(tpm);
        // No TPM from here on. The key is certified by the pinned AK as a TPM-resident key.
        vmattest_env(
            None,
            &["tpm", "verify-key", &p("tpm.pub"), "--ak", &p("ak")],
        )
        .ok();
        let other_tpm = Swtpm::start();
        vmattest_env(
            Some(&other_tpm.tcti()),
            &["tpm", "ak", "--out", &p("other-ak")],
        )
        .ok();
        vmattest_env(
            None,
            &["tpm", "verify-key", &p("tpm.pub"), "--ak", &p("other-ak")],
        )
        .fails(1, "certification");
        let cert = std::fs::read_to_string(p("tpm.pub.certify")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&cert).unwrap();
        v["nonce"] = "00".repeat(32).into();
        std::fs::write(p("bad.certify"), v.to_string()).unwrap();
        vmattest_env(
            None,
            &[
                "tpm",
                "verify-key",
                &p("tpm.pub"),
                "--ak",
                &p("ak"),
                "--certify",
                &p("bad.certify"),
            ],
        )
        .fails(1, "nonce");
        vmattest_env(
            None,
            &[
                "snapshot",
                "verify",
                "--store",
                &p("s"),
                "--pubkey",
                &p("tpm.pub"),
            ],
        )
        .ok();
        vmattest_env(None, &["keygen", "--alg", "p384", "--out", &p("other")]).ok();
        vmattest_env(
            None,
            &[
                "snapshot",
                "verify",
                "--store",
                &p("s"),
                "--pubkey",
                &p("other.pub"),
            ],
        )
        .fails(1, "seq 0");
    }

    /// An encrypted chain whose secret is sealed to PCR 16 restores on this host until PCR 16
    /// changes; then the restore is refused and names the PCR.
    #[test]
    fn sealed_store_secret_binds_restores_to_the_pcrs() {
        let tpm = Swtpm::start();
        let t = Some(tpm.tcti());
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
        vmattest_env(None, &["keygen", "--alg", "ed25519", "--out", &p("k")]).ok();
        vmattest_env(
            None,
            &[
                "snapshot",
                "init",
                "--store",
                &p("s"),
                "--vm-id",
                "t",
                "--secret",
                &p("secret"),
            ],
        )
        .ok();
        let mem = common::vm_like(32 * common::PAGE, 3);
        std::fs::write(p("mem"), &mem).unwrap();
        vmattest_env(
            t.as_deref(),
            &[
                "tpm",
                "seal",
                "--pcr",
                "16",
                "--in",
                &p("secret"),
                "--out",
                &p("sealed"),
            ],
        )
        .ok();
        std::fs::remove_file(p("secret")).unwrap();
        let take = |seq: &str| {
            vmattest_env(
                t.as_deref(),
                &[
                    "snapshot",
                    "take",
                    "--store",
                    &p("s"),
                    "--key",
                    &p("k"),
                    "--memory",
                    &p("mem"),
                    "--secret",
                    &p("sealed"),
                ],
            )
            .ok();
            seq.to_owned()
        };
        take("0");
        let restore = |out: &str| {
            vmattest_env(
                t.as_deref(),
                &[
                    "snapshot",
                    "restore",
                    "--store",
                    &p("s"),
                    "--pubkey",
                    &p("k.pub"),
                    "--secret",
                    &p("sealed"),
                    "--out",
                    &p(out),
                ],
            )
        };
        restore("ok").ok();
        assert_eq!(
            std::fs::read(dir.path().join("ok").join("memory")).unwrap(),
            mem
        );
        std::fs::write(p("hv"), b"another hypervisor").unwrap();
        vmattest_env(
            t.as_deref(),
            &["tpm", "extend", "--pcr", "16", "--file", &p("hv")],
        )
        .ok();
        restore("refused").fails(1, "PCR 16 differs");
        assert!(!dir.path().join("refused").exists());
    }

    /// `--bind-pcr`: vmattest and the VM config are measured into PCR 23 once, and each link
    /// gets a quote over its digest whose events replay to the quoted PCR 23.
    #[test]
    fn links_are_bound_to_measured_pcrs() {
        let tpm = Swtpm::start();
        let t = Some(tpm.tcti());
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
        let log = p("events.jsonl");
        let env = [("VMATTEST_EVENT_LOG", log.as_str())];
        vmattest_env(t.as_deref(), &["tpm", "ak", "--out", &p("ak")]).ok();
        vmattest_env(
            None,
            &["snapshot", "init", "--store", &p("s"), "--vm-id", "t"],
        )
        .ok();
        std::fs::write(p("mem"), common::vm_like(16 * common::PAGE, 2)).unwrap();
        std::fs::write(p("cfg"), b"{\"memory_mib\":256}").unwrap();
        let mut quotes = Vec::new();
        for _ in 0..2 {
            let r = vmattest_with(
                t.as_deref(),
                &env,
                &[
                    "--json",
                    "snapshot",
                    "take",
                    "--store",
                    &p("s"),
                    "--signer",
                    "tpm",
                    "--bind-pcr",
                    "23",
                    "--memory",
                    &p("mem"),
                    "--config",
                    &format!("config={}", p("cfg")),
                ],
            )
            .ok();
            let lines: Vec<serde_json::Value> = r
                .stdout
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let link = lines[0]["link"].as_str().unwrap().to_owned();
            quotes.push((lines[1]["quote"].as_str().unwrap().to_owned(), link));
        }
        // Measured once: both quotes carry the same two events and the same PCR 23.
        let logged = std::fs::read_to_string(&log).unwrap();
        assert_eq!(logged.lines().count(), 2, "{logged}");
        for (quote, link) in &quotes {
            let v = verify_quote(quote, &p("ak"), link).ok().json();
            let kinds: Vec<&str> = v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["kind"].as_str().unwrap())
                .collect();
            assert_eq!(kinds, ["vmattest", "config"]);
        }
        // The quote is bound to its own link only.
        verify_quote(&quotes[0].0, &p("ak"), &quotes[1].1).fails(1, "nonce");
        // An edited event no longer replays to the quoted PCR 23.
        let text = std::fs::read_to_string(&quotes[1].0).unwrap();
        let forged = text
            .replace("memory", "memorx")
            .replace(&env!("CARGO_PKG_VERSION").to_string(), "9.9.9");
        std::fs::write(p("forged"), forged).unwrap();
        verify_quote(&p("forged"), &p("ak"), &quotes[1].1).fails(1, "event");
    }

    /// A VM capture with `--bind-pcr` measures the QEMU binary it ran with.
    #[test]
    fn vm_capture_measures_the_hypervisor() {
        let tpm = Swtpm::start();
        let t = Some(tpm.tcti());
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
        let log = p("events.jsonl");
        let env = [("VMATTEST_EVENT_LOG", log.as_str())];
        let g = common::guest::Guest::new(dir.path(), "vm-tpm");
        g.start();
        vmattest_env(t.as_deref(), &["tpm", "ak", "--out", &p("ak")]).ok();
        vmattest_env(
            None,
            &["snapshot", "init", "--store", &p("s"), "--vm-id", "vm-tpm"],
        )
        .ok();
        let r = vmattest_with(
            t.as_deref(),
            &env,
            &[
                "--json",
                "snapshot",
                "take",
                "--store",
                &p("s"),
                "--vm",
                g.arg(),
                "--signer",
                "tpm",
                "--bind-pcr",
                "23",
            ],
        )
        .ok();
        let lines: Vec<serde_json::Value> = r
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let link = lines[0]["link"].as_str().unwrap();
        let quote = lines[1]["quote"].as_str().unwrap();
        let v = verify_quote(quote, &p("ak"), link).ok().json();
        let events = v["events"].as_array().unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["vmattest", "hypervisor", "config"]);
        let qemu = common::oracle(
            "sh",
            &["-c", "sha256sum \"$(command -v qemu-system-x86_64)\""],
        );
        let want = qemu.split_whitespace().next().unwrap();
        let hv = events[1]["value"].as_str().unwrap();
        assert!(hv.ends_with(&format!("sha256:{want}")), "{hv} vs {want}");
    }

    /// A TPM manufactured with an EK certificate: `tpm info` and the key certification record
    /// it (DER, as provisioned); a TPM without one says so.
    #[test]
    fn ek_certificate_is_recorded_when_provisioned() {
        let tpm = Swtpm::start_with_ek_certificate();
        let t = Some(tpm.tcti());
        let info = vmattest_env(t.as_deref(), &["--json", "tpm", "info"])
            .ok()
            .json();
        let cert = info["ek_certificate"].as_str().expect("an EK certificate");
        // DER: a SEQUENCE.
        assert!(cert.starts_with("30"), "{cert}");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tpm.pub");
        vmattest_env(
            t.as_deref(),
            &["tpm", "keygen", "--out", out.to_str().unwrap()],
        )
        .ok();
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("tpm.pub.certify")).unwrap())
                .unwrap();
        assert_eq!(c["ek_certificate"].as_str(), Some(cert));
        let bare = Swtpm::start();
        let info = vmattest_env(Some(&bare.tcti()), &["--json", "tpm", "info"])
            .ok()
            .json();
        assert!(info["ek_certificate"].is_null());
    }
}

/// An agent whose evidence key lives in the TPM: registered with the AK's certification, it
/// earns the `hardware` claim; a foreign AK is refused at registration.
#[cfg(feature = "tpm")]
#[test]
fn tpm_resident_agent_key_earns_the_hardware_claim() {
    use common::server::Server;
    use vmattest_agent::evidence::{Measured, evidence_bytes};
    use vmattest_api::{NewBaseline, Provenance, Role};
    use vmattest_client::Client;
    use vmattest_testkit::Swtpm;

    let tpm = Swtpm::start();
    let other = Swtpm::start();
    let t = Some(tpm.tcti());
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    vmattest_env(t.as_deref(), &["tpm", "keygen", "--out", &p("tk.pub")]).ok();
    vmattest_env(t.as_deref(), &["tpm", "ak", "--out", &p("ak")]).ok();
    vmattest_env(Some(&other.tcti()), &["tpm", "ak", "--out", &p("other-ak")]).ok();

    let server = Server::start(&dir.path().join("state"), None);
    let admin = server.admin_token();
    server
        .remote(
            &admin,
            &[
                "host",
                "add",
                "--name",
                "h0",
                "--pubkey",
                &p("tk.pub"),
                "--ak",
                &p("other-ak"),
            ],
        )
        // The server checked the certification and it did not verify: exit 1.
        .fails(1, "tpm_binding");
    let host = server
        .remote(
            &admin,
            &[
                "--json",
                "host",
                "add",
                "--name",
                "h1",
                "--pubkey",
                &p("tk.pub"),
                "--ak",
                &p("ak"),
            ],
        )
        .ok()
        .json();
    assert_eq!(host["tpm_backed"], true, "{host}");

    let policy = common::server::tiny_policy();
    let ram = common::vm_like(16 * 4096, 3);
    let c = Client::new(&server.url(), Some(admin)).unwrap();
    let pid = common::server::register_vms(&c, "h1", &["vm1"]);
    let d = "00".repeat(32);
    c.set_baseline(
        "vm1",
        &NewBaseline {
            policy_id: pid,
            regions: vmattest_agent::region_pages(&ram, &policy, &[]).unwrap(),
            patch_sites: Vec::new(),
            call_sites: Vec::new(),
            provenance: Provenance {
                store_vm_id: "vm1".into(),
                seq: 0,
                link_digest: d.clone(),
                state_root: d,
                signer_key_ids: vec![],
                snapshot_time: vmattest_api::time::from_secs(0),
                component: "ram".into(),
            },
        },
    )
    .unwrap();
    let token = common::server::token(&c, Role::Agent, Some("h1"));
    let agent = Client::new(&server.url(), Some(token)).unwrap();
    let ch = agent.challenge("vm1").unwrap();
    let (policy, nonce) = vmattest_agent::run::check_challenge("vm1", &ch).unwrap();
    let measurement = vmattest_agent::measure(&ram, &policy, &ch.subset, &nonce).unwrap();
    let signer = vmattest_tpm::TpmSigner::open(&vmattest_tpm::TpmConfig::tcti(tpm.tcti())).unwrap();
    let bytes = evidence_bytes(
        Measured {
            vm: "vm1",
            nonce: &nonce,
            policy: &policy,
            subset: &ch.subset,
            measurement,
        },
        &signer,
    )
    .unwrap();
    let r = agent.evidence(&bytes).unwrap();
    assert_eq!((r.status.as_str(), r.score), ("affirming", 100), "{r:?}");
    assert_eq!(r.trust_vector["hardware"], 2);
}

/// A configuration statement signed by the TPM key and bound to a quote: the config root is
/// measured into PCR 23, and the quote's nonce covers the signed statement.
#[cfg(feature = "tpm")]
#[test]
fn config_statement_signed_and_quoted_by_the_tpm() {
    let tpm = vmattest_testkit::Swtpm::start();
    let t = Some(tpm.tcti());
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let g = common::guest::guest_dir();
    std::fs::write(
        p("vm.toml"),
        format!(
            "name = \"cfg\"\nmemory_mib = 128\nvcpus = 1\nrun_dir = \"run\"\n[boot]\nkernel = \"{}\"\ninitrd = \"{}\"\n",
            g.join("vmlinuz").display(),
            g.join("initramfs.cpio.gz").display()
        ),
    )
    .unwrap();
    vmattest_env(t.as_deref(), &["tpm", "keygen", "--out", &p("tk.pub")]).ok();
    vmattest_env(t.as_deref(), &["tpm", "ak", "--out", &p("ak")]).ok();
    let events = p("events.jsonl");
    let env = [("VMATTEST_EVENT_LOG", events.as_str())];
    let m = vmattest_with(
        t.as_deref(),
        &env,
        &[
            "--json",
            "config",
            "measure",
            "--vm",
            &p("vm.toml"),
            "--signer",
            "tpm",
            "--bind-pcr",
            "23",
            "--out",
            &p("m"),
        ],
    )
    .ok()
    .json();
    let nonce = m["quote_nonce"].as_str().unwrap();
    let q = vmattest_env(
        None,
        &[
            "--json",
            "tpm",
            "verify-quote",
            m["quote"].as_str().unwrap(),
            "--ak",
            &p("ak"),
            "--nonce",
            nonce,
        ],
    )
    .ok()
    .json();
    let text = q.to_string();
    assert!(
        text.contains("config-root") && text.contains(m["root"].as_str().unwrap()),
        "{text}"
    );
    // Another nonce (another statement) fails.
    vmattest_env(
        None,
        &[
            "tpm",
            "verify-quote",
            m["quote"].as_str().unwrap(),
            "--ak",
            &p("ak"),
            "--nonce",
            &"00".repeat(32),
        ],
    )
    .fails(1, "nonce");
    // The statement is the TPM key's: a disclosure verifies with its public key.
    vmattest_env(
        None,
        &[
            "config",
            "disclose",
            &p("m"),
            "--param",
            "memory_mib",
            "--out",
            &p("proof"),
        ],
    )
    .ok();
    let shown = vmattest_env(
        None,
        &[
            "config",
            "verify-disclosure",
            &p("proof"),
            "--pubkey",
            &p("tk.pub"),
        ],
    )
    .ok();
    assert!(
        shown.stdout.contains("memory_mib = 128"),
        "{}",
        shown.stdout
    );
}

/// `vm launch --bind-pcr 23` puts the accepted config root into PCR 23: the quotes that later
/// snapshots of the VM store carry it, so the chain records the launched configuration.
#[cfg(feature = "tpm")]
#[test]
fn launched_config_is_recorded_in_the_chains_quotes() {
    let tpm = vmattest_testkit::Swtpm::start();
    let t = Some(tpm.tcti());
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let guest = common::guest::Guest::new(dir.path(), "lq");
    vmattest_env(t.as_deref(), &["tpm", "keygen", "--out", &p("tk.pub")]).ok();
    std::fs::write(p("ref.toml"), "[expect]\nmemory_mib = 128\n").unwrap();
    let events = p("events.jsonl");
    let env = [("VMATTEST_EVENT_LOG", events.as_str())];
    let run = |args: &[&str]| vmattest_with(t.as_deref(), &env, args);
    run(&[
        "vm",
        "launch",
        "--vm",
        guest.arg(),
        "--reference",
        &p("ref.toml"),
        "--signer",
        "tpm",
        "--bind-pcr",
        "23",
        "--wait-for",
        "READY",
        "--out",
        &p("cfg"),
    ])
    .ok();
    let root = run(&["--json", "config", "show", &p("cfg")]).ok().json()["root"]
        .as_str()
        .unwrap()
        .to_string();
    run(&[
        "snapshot",
        "init",
        "--store",
        &p("store"),
        "--vm-id",
        "lq",
        "--alg",
        "sha256",
    ])
    .ok();
    run(&[
        "snapshot",
        "take",
        "--store",
        &p("store"),
        "--vm",
        guest.arg(),
        "--signer",
        "tpm",
        "--bind-pcr",
        "23",
    ])
    .ok();
    let quote =
        std::fs::read_to_string(dir.path().join("store/quotes/00000000000000000000.json")).unwrap();
    assert!(
        quote.contains("config-root") && quote.contains(&root),
        "{quote}"
    );
}
