//! End-to-end CLI behaviour: keys, signed records, proofs, tampering and bad input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use common::*;

const ALGS: [&str; 4] = ["ed25519", "p384", "ml-dsa-65", "hybrid"];

fn keygen(dir: &Path, alg: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{alg}.key"));
    let j = vmattest(["keygen", "--json", "--alg", alg, "--out", s(&key)])
        .ok()
        .json();
    assert_eq!(j["alg"], alg);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    (key.clone(), dir.join(format!("{alg}.key.pub")))
}

#[test]
fn sign_verify_tamper_detect_for_every_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let img = write(dir.path(), "disk.img", &vm_like(40 * PAGE, 1));
    for alg in ALGS {
        let (key, pubkey) = keygen(dir.path(), alg);
        let rec = dir.path().join(format!("{alg}.rec"));
        let j = vmattest([
            "sign",
            "--json",
            "--key",
            s(&key),
            "--out",
            s(&rec),
            s(&img),
        ])
        .ok()
        .json();
        assert_eq!(j["images"][0]["root"], b3sum(&img));
        let v = vmattest([
            "verify",
            "--json",
            "--check-images",
            "--pubkey",
            s(&pubkey),
            s(&rec),
        ])
        .ok()
        .json();
        assert_eq!(v["ok"], true);

        // A changed byte in the image is found by re-measuring.
        let mut data = std::fs::read(&img).unwrap();
        data[17 * PAGE + 5] ^= 1;
        std::fs::write(&img, &data).unwrap();
        vmattest(["verify", "--check-images", "--pubkey", s(&pubkey), s(&rec)])
            .fails(1, "disk.img: root");
        data[17 * PAGE + 5] ^= 1;
        std::fs::write(&img, &data).unwrap();

        // A changed byte in the signature is a verification failure.
        let mut bytes = std::fs::read(&rec).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 0x40;
        let bad = dir.path().join("bad.rec");
        std::fs::write(&bad, &bytes).unwrap();
        vmattest(["verify", "--pubkey", s(&pubkey), s(&bad)]).fails(1, "signature 0");
    }
}

#[test]
fn co_signed_record_needs_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let img = write(dir.path(), "a.img", &vm_like(3 * PAGE, 2));
    let (k1, p1) = keygen(dir.path(), "ed25519");
    let (k2, p2) = keygen(dir.path(), "ml-dsa-65");
    let rec = dir.path().join("r");
    vmattest([
        "sign",
        "--key",
        s(&k1),
        "--key",
        s(&k2),
        "--out",
        s(&rec),
        s(&img),
    ])
    .ok();
    vmattest(["verify", "--pubkey", s(&p1), "--pubkey", s(&p2), s(&rec)]).ok();
    vmattest(["verify", "--pubkey", s(&p1), s(&rec)]).fails(1, "signature 1 is by key");
}

/// Pinning two keys means both must sign: a record signed by one of them is refused.
#[test]
fn regression_cosigned_record_is_enforced_as_all_of_n() {
    let dir = tempfile::tempdir().unwrap();
    let img = write(dir.path(), "a.img", &vm_like(3 * PAGE, 2));
    let (k1, p1) = keygen(dir.path(), "ed25519");
    let (_, p2) = keygen(dir.path(), "p384");
    let rec = dir.path().join("r");
    vmattest(["sign", "--key", s(&k1), "--out", s(&rec), s(&img)]).ok();
    vmattest(["verify", "--pubkey", s(&p1), s(&rec)]).ok();
    vmattest(["verify", "--pubkey", s(&p1), "--pubkey", s(&p2), s(&rec)])
        .fails(1, "every given key must sign");
}

#[test]
fn nonce_and_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let img = write(dir.path(), "a.img", &vm_like(PAGE, 3));
    let (k, p) = keygen(dir.path(), "ed25519");
    let rec = dir.path().join("r");
    vmattest([
        "sign",
        "--nonce",
        "00ff",
        "--key",
        s(&k),
        "--out",
        s(&rec),
        s(&img),
    ])
    .ok();
    vmattest([
        "verify",
        "--nonce",
        "00ff",
        "--max-age",
        "60",
        "--pubkey",
        s(&p),
        s(&rec),
    ])
    .ok();
    vmattest(["verify", "--nonce", "00fe", "--pubkey", s(&p), s(&rec)]).fails(1, "nonce 00ff");
}

#[test]
fn page_proofs_verify_without_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let data = vm_like(300 * PAGE + 123, 4);
    let img = write(dir.path(), "mem.img", &data);
    let (k, p) = keygen(dir.path(), "hybrid");
    for alg in ["blake3", "sha256", "sha384"] {
        let rec = dir.path().join(format!("{alg}.rec"));
        vmattest([
            "sign",
            "--alg",
            alg,
            "--key",
            s(&k),
            "--out",
            s(&rec),
            s(&img),
        ])
        .ok();
        let proof = dir.path().join(format!("{alg}.proof"));
        let j = vmattest([
            "prove",
            "--json",
            "--alg",
            alg,
            "--page",
            "299",
            "--count",
            "2",
            "--out",
            s(&proof),
            s(&img),
        ])
        .ok()
        .json();
        let root = j["root"].as_str().unwrap().to_owned();
        let moved = dir.path().join("elsewhere.proof");
        std::fs::copy(&proof, &moved).unwrap();
        let out = dir.path().join("pages.bin");
        let _ = std::fs::remove_file(&out);
        vmattest([
            "verify-proof",
            "--root",
            &root,
            "--extract",
            s(&out),
            s(&moved),
        ])
        .ok();
        assert_eq!(std::fs::read(&out).unwrap(), &data[299 * PAGE..]);
        vmattest([
            "verify-proof",
            "--record",
            s(&rec),
            "--pubkey",
            s(&p),
            s(&moved),
        ])
        .ok();

        let wrong = "00".repeat(j["root"].as_str().unwrap().len() / 2);
        vmattest(["verify-proof", "--root", &wrong, s(&moved)]).fails(1, "expected 0000");
        // A page byte changed inside the proof.
        let mut bytes = std::fs::read(&moved).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x80;
        std::fs::write(&moved, &bytes).unwrap();
        vmattest(["verify-proof", "--root", &root, s(&moved)]).fails(1, "do not hash to the root");
    }
}

#[test]
fn bad_input_gets_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = write(d, "a.img", &vm_like(5 * PAGE, 5));
    let missing = d.join("missing.img");
    vmattest(["measure", s(&missing)]).fails(2, "missing.img: no such file");
    vmattest(["measure", s(d)]).fails(2, "is a directory");
    vmattest(["measure", "--alg", "md5", s(&img)]).fails(2, "expected blake3, sha256 or sha384");
    vmattest(["measure", "--alg", "sha256", "--salt", "xyz", s(&img)]).fails(2, "--salt \"xyz\"");
    vmattest(["measure", "--salt", "00", s(&img)]).fails(2, "takes none");
    let empty = write(d, "empty.img", b"");
    vmattest(["measure", "--alg", "sha256", s(&empty)]).fails(2, "empty image");
    vmattest(["keygen", "--alg", "rsa", "--out", s(&d.join("k"))])
        .fails(2, "unknown key algorithm");

    let unreadable = write(d, "noperm.img", b"x");
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&unreadable).is_err() {
        vmattest(["measure", s(&unreadable)]).fails(2, "cannot read");
    }

    // Proofs: truncated, foreign, wrong kind.
    let proof = d.join("p");
    vmattest(["prove", "--page", "1", "--out", s(&proof), s(&img)]).ok();
    let bytes = std::fs::read(&proof).unwrap();
    let trunc = write(d, "trunc.proof", &bytes[..bytes.len() - 100]);
    vmattest(["verify-proof", "--root", "00", s(&trunc)]).fails(2, "truncated");
    let foreign = write(d, "foreign.proof", b"{\"not\": \"a proof\"}");
    vmattest(["verify-proof", "--root", "00", s(&foreign)]).fails(2, "expected magic");
    vmattest(["prove", "--page", "5", "--out", s(&proof), s(&img)]).fails(2, "outside the image");

    // Keys: malformed, wrong type, insecure mode.
    let (key, pubkey) = keygen(d, "ed25519");
    let junk = write(
        d,
        "junk.key",
        b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    );
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rec = d.join("r");
    vmattest(["sign", "--key", s(&junk), "--out", s(&rec), s(&img)]).fails(2, "junk.key");
    vmattest(["sign", "--key", s(&pubkey), "--out", s(&rec), s(&img)]).fails(2, "PUBLIC KEY");
    let loose = d.join("loose.key");
    std::fs::copy(&key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    vmattest(["sign", "--key", s(&loose), "--out", s(&rec), s(&img)]).fails(2, "0644");
    vmattest(["sign", "--key", s(&key), "--out", s(&rec), s(&img)]).ok();
    vmattest(["verify", "--pubkey", s(&key), s(&rec)]).fails(2, "PRIVATE KEY");

    // A record signed by another key.
    let (_, other_pub) = keygen(d, "p384");
    vmattest(["verify", "--pubkey", s(&other_pub), s(&rec)])
        .fails(1, "expected one of the given public keys");
    // A proof where a record is expected, and the reverse.
    vmattest(["verify", "--pubkey", s(&pubkey), s(&proof)]).fails(2, "expected a signed object");
    vmattest(["verify-proof", "--root", "00", s(&rec)]).fails(2, "expected a page proof");
    // Oversize input is refused before it is read.
    let big = d.join("big.rec");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    vmattest(["verify", "--pubkey", s(&pubkey), s(&big)])
        .fails(2, "expected a signed record of at most");
}

#[test]
fn pubkey_export_matches_keygen() {
    let dir = tempfile::tempdir().unwrap();
    for alg in ALGS {
        let (key, pubkey) = keygen(dir.path(), alg);
        let out = vmattest(["pubkey", s(&key)]).ok().stdout;
        assert_eq!(out, std::fs::read_to_string(&pubkey).unwrap(), "{alg}");
    }
}

#[test]
fn show_describes_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = write(dir.path(), "a.img", &vm_like(2 * PAGE, 6));
    let (k, _) = keygen(dir.path(), "ed25519");
    let rec = dir.path().join("r");
    vmattest(["sign", "--key", s(&k), "--out", s(&rec), s(&img)]).ok();
    let j = vmattest(["show", "--json", s(&rec)]).ok().json();
    assert_eq!(j["kind"], "signed object");
    assert_eq!(j["images"][0]["pages"], 2);
}

/// Regression: an output named without a directory ("rec", not "./rec") failed to sync ".".
#[test]
fn bare_file_names_are_written_in_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.img", &vm_like(2 * PAGE, 8));
    let (key, _) = keygen(dir.path(), "ed25519");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmattest"))
        .current_dir(dir.path())
        .args(["sign", "--key", s(&key), "--out", "rec", "a.img"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("rec").exists());
}

/// Found in review: the libvirt hook read its token and key before looking at which call it
/// was, so a missing token failed every call, and libvirt aborts a migration or a restore
/// whose hook fails. Only `prepare begin` and `start begin` may fail.
#[test]
fn regression_hook_fails_only_the_calls_it_gates() {
    let run = |op: &str, sub: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vmattest"))
            .args(["libvirt", "hook", "--server", "http://127.0.0.1:9"])
            .args([
                "--token-file",
                "/nonexistent/token",
                "--key",
                "/nonexistent/key",
            ])
            .args(["--", "web1", op, sub, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"<domain type='kvm'><name>web1</name></domain>");
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    for (op, sub) in [
        ("migrate", "begin"),
        ("restore", "begin"),
        ("started", "begin"),
        ("stopped", "end"),
        ("release", "end"),
        ("reconnect", "begin"),
    ] {
        let out = run(op, sub);
        assert!(out.status.success(), "{op} {sub}: {out:?}");
        assert!(
            out.stdout.is_empty(),
            "{op} {sub}: a hook's output replaces the XML"
        );
    }
    for op in ["prepare", "start"] {
        let out = run(op, "begin");
        assert!(
            !out.status.success(),
            "{op}: a gate that cannot check must refuse"
        );
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// `--version` names the features of the build; completions and man pages come from the same
/// command definition (the package ships them).
#[test]
fn version_completions_and_man_pages() {
    let v = vmattest(["--version"]).ok().stdout;
    assert!(v.starts_with("vmattest "), "{v}");
    let features = v.split("(features: ").nth(1).unwrap();
    for (on, name) in [
        (cfg!(feature = "tpm"), "tpm"),
        (cfg!(feature = "libvirt"), "libvirt"),
    ] {
        assert_eq!(features.contains(name), on, "{v}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = vmattest(["completions", shell]).ok().stdout;
        assert!(out.contains("hostd") && out.contains("snapshot"), "{shell}");
    }
    let bad = vmattest(["completions", "tcsh"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("tcsh"), "{}", bad.stderr);
    let dir = tempfile::tempdir().unwrap();
    let j = vmattest(["--json", "manpages", s(dir.path())]).ok().json();
    let pages: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for page in [
        "vmattest.1",
        "vmattest-hostd.1",
        "vmattest-snapshot-take.1",
        "vmattest-remote-rotate-ear-key.1",
    ] {
        assert!(pages.contains(&page), "{page}: {pages:?}");
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
}
