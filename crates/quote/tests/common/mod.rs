//! Test harness: a private swtpm per test, driven by tpm2-tools (5.4) over the swtpm TCTI.
//!
//! There is no resource manager, so every tool call is followed by `tpm2_flushcontext -t`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub use vmattest_testkit::Swtpm;

/// A swtpm plus a scratch directory in which tools run.
pub struct Lab {
    pub tpm: Swtpm,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        Lab {
            tpm: Swtpm::start(),
            dir: tempfile::tempdir().expect("work dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    pub fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path(name), bytes).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", self.tpm.tcti())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a program in the work dir and returns its output, whatever the exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
    }

    /// Runs a tpm2-tools command that must succeed, then flushes transient objects.
    pub fn tool(&self, program: &str, args: &[&str]) -> Output {
        let out = self.output(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.flush();
        out
    }

    /// Whether a command exits with status 0 (for oracles).
    pub fn accepts(&self, program: &str, args: &[&str]) -> bool {
        self.output(program, args).status.success()
    }

    pub fn flush(&self) {
        let out = self.output("tpm2_flushcontext", &["-t"]);
        assert!(
            out.status.success(),
            "tpm2_flushcontext -t failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Storage primary and a restricted ECC P-256 ECDSA-SHA256 attestation key.
    /// Writes primary.ctx, ak.pub/ak.priv/ak.ctx, ak.pem (SPKI), ak.tpmt (TPMT_PUBLIC)
    /// and ak.name.
    pub fn make_ak(&self) {
        self.tool(
            "tpm2_createprimary",
            &[
                "-Q",
                "-C",
                "o",
                "-g",
                "sha256",
                "-G",
                "ecc256",
                "-c",
                "primary.ctx",
            ],
        );
        self.tool(
            "tpm2_create",
            &[
                "-Q",
                "-C",
                "primary.ctx",
                // A restricted signing key needs symmetric NULL, hence the ":null".
                "-G",
                "ecc256:ecdsa-sha256:null",
                "-a",
                "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
                "-u",
                "ak.pub",
                "-r",
                "ak.priv",
            ],
        );
        self.tool(
            "tpm2_load",
            &[
                "-Q",
                "-C",
                "primary.ctx",
                "-u",
                "ak.pub",
                "-r",
                "ak.priv",
                "-c",
                "ak.ctx",
            ],
        );
        self.tool(
            "tpm2_readpublic",
            &["-Q", "-c", "ak.ctx", "-f", "pem", "-o", "ak.pem"],
        );
        self.tool(
            "tpm2_readpublic",
            &[
                "-Q", "-c", "ak.ctx", "-f", "tpmt", "-o", "ak.tpmt", "-n", "ak.name",
            ],
        );
    }

    /// Extends PCR 16 and quotes sha256:0,16 with `nonce_hex`. Writes quote.msg
    /// (TPMS_ATTEST), quote.sig (TPMT_SIGNATURE), quote.pcrs (tpm2-tools PCR file) and
    /// pcrs.bin (the two raw values). Returns [(0, value), (16, value)].
    pub fn quote(&self, nonce_hex: &str) -> Vec<(u32, [u8; 32])> {
        self.tool(
            "tpm2_pcrextend",
            &["16:sha256=5f1a9e0c3b7d2a4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6"],
        );
        self.tool(
            "tpm2_quote",
            &[
                "-Q",
                "-c",
                "ak.ctx",
                "-l",
                "sha256:0,16",
                "-q",
                nonce_hex,
                "-m",
                "quote.msg",
                "-s",
                "quote.sig",
                "-o",
                "quote.pcrs",
                "-g",
                "sha256",
            ],
        );
        self.tool("tpm2_pcrread", &["-Q", "sha256:0,16", "-o", "pcrs.bin"]);
        let raw = self.read("pcrs.bin");
        assert_eq!(raw.len(), 64, "pcrs.bin holds two raw SHA-256 values");
        let mut pcr0 = [0u8; 32];
        let mut pcr16 = [0u8; 32];
        pcr0.copy_from_slice(&raw[..32]);
        pcr16.copy_from_slice(&raw[32..]);
        vec![(0, pcr0), (16, pcr16)]
    }

    /// The oracle: `tpm2_checkquote` on the given files.
    pub fn checkquote(&self, msg: &str, sig: &str, pcrs: &str, nonce_hex: &str) -> bool {
        self.accepts(
            "tpm2_checkquote",
            &[
                "-u", "ak.pem", "-m", msg, "-s", sig, "-f", pcrs, "-g", "sha256", "-q", nonce_hex,
            ],
        )
    }

    /// An unrestricted ECC P-256 signing key certified by the AK. Writes key.pub/key.priv/
    /// key.ctx, key.tpmt, key.name, attest.out (TPMS_ATTEST) and sig.out (TPMT_SIGNATURE).
    pub fn certify(&self) {
        self.tool(
            "tpm2_create",
            &[
                "-Q",
                "-C",
                "primary.ctx",
                "-G",
                "ecc256:ecdsa-sha256",
                "-a",
                "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
                "-u",
                "key.pub",
                "-r",
                "key.priv",
            ],
        );
        self.tool(
            "tpm2_load",
            &[
                "-Q",
                "-C",
                "primary.ctx",
                "-u",
                "key.pub",
                "-r",
                "key.priv",
                "-c",
                "key.ctx",
            ],
        );
        self.tool(
            "tpm2_readpublic",
            &[
                "-Q", "-c", "key.ctx", "-f", "tpmt", "-o", "key.tpmt", "-n", "key.name",
            ],
        );
        // tpm2-tools 5.4's tpm2_certify has no -q; it always sends qualifying data 00ff55aa.
        self.tool(
            "tpm2_certify",
            &[
                "-Q",
                "-c",
                "key.ctx",
                "-C",
                "ak.ctx",
                "-g",
                "sha256",
                "-o",
                "attest.out",
                "-s",
                "sig.out",
            ],
        );
    }
}

/// DER `ECDSA-Sig-Value` from big-endian r and s, for the openssl oracle.
pub fn der_signature(r: &[u8; 32], s: &[u8; 32]) -> Vec<u8> {
    fn integer(v: &[u8; 32]) -> Vec<u8> {
        let start = v.iter().position(|&b| b != 0).unwrap_or(31);
        let mut body = Vec::new();
        if v[start] & 0x80 != 0 {
            body.push(0);
        }
        body.extend_from_slice(&v[start..]);
        let mut out = vec![0x02, body.len() as u8];
        out.extend_from_slice(&body);
        out
    }
    let mut seq = integer(r);
    seq.extend(integer(s));
    let mut out = vec![0x30, seq.len() as u8];
    out.extend(seq);
    out
}
