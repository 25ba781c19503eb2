//! One module per group of subcommands; shared helpers here.

mod agent;
mod bind;
mod config;
mod keys;
mod launch;
mod measure;
mod policy;
mod proof;
mod record;
mod remote;
pub mod serve;
mod show;
mod snapshot;
mod tpm;
mod vm;

use std::path::Path;

use anyhow::{Context as _, bail};
use vmattest_core::alg::HashAlg;
use vmattest_core::tree::TreeParams;

use crate::args::{Cli, Command, TreeArgs};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Measure {
            images,
            tree,
            hash_device,
        } => measure::run(&images, &tree, hash_device.as_deref(), json),
        Command::Keygen { alg, out } => keys::keygen(&alg, &out, json),
        Command::Pubkey { key, out } => keys::pubkey(&key, out.as_deref(), json),
        Command::Sign {
            images,
            keys,
            out,
            tree,
            nonce,
        } => record::sign(&images, &keys, &out, &tree, &nonce, json),
        Command::Verify {
            record,
            pubkeys,
            check_images,
            max_age,
            nonce,
        } => record::verify(
            &record,
            &pubkeys,
            check_images,
            max_age,
            nonce.as_deref(),
            json,
        ),
        Command::Prove {
            image,
            page,
            count,
            out,
            tree,
        } => proof::prove(&image, page, count, &out, &tree, json),
        Command::VerifyProof {
            proof,
            root,
            record,
            pubkeys,
            extract,
        } => proof::verify(
            &proof,
            root.as_deref(),
            record.as_deref(),
            &pubkeys,
            extract.as_deref(),
            json,
        ),
        Command::Show { file } => show::run(&file, json),
        Command::Snapshot(cmd) => snapshot::run(cmd, json),
        Command::Vm(cmd) => vm::run(cmd, json),
        Command::Tpm(cmd) => tpm::run(cmd, json),
        Command::Policy(cmd) => policy::run(cmd, json),
        Command::Agent(args) => agent::run(args, json),
        Command::Attest(cmd) => agent::attest(cmd, json),
        Command::Remote(args) => remote::run(args, json),
        Command::Serve(args) => serve::run(args, json),
        Command::Config(cmd) => config::run(cmd, json),
        Command::Guard { qmp, marker } => vm::guard(&qmp, &marker),
    }
}

pub fn tree_params(args: &TreeArgs) -> anyhow::Result<TreeParams> {
    let Some(alg) = HashAlg::from_name(&args.alg) else {
        bail!(
            "--alg {:?}: unknown hash algorithm, expected blake3, sha256 or sha384",
            args.alg
        );
    };
    let salt_text = if args.salt == "-" {
        ""
    } else {
        args.salt.as_str()
    };
    let salt = parse_hex("--salt", salt_text)?;
    TreeParams::new(alg, &salt).context("--salt")
}

pub fn parse_hex(what: &str, text: &str) -> anyhow::Result<Vec<u8>> {
    hex::decode(text)
        .map_err(|_| anyhow::anyhow!("{what} {text:?}: expected an even number of hex digits"))
}

/// Reads a vmattest file, refusing anything larger than `max` bytes before reading it.
pub fn read_capped(path: &Path, max: usize, what: &str) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read {what}", path.display()))?;
    if meta.is_dir() {
        bail!("{}: is a directory, expected a {what}", path.display());
    }
    if meta.len() > max as u64 {
        bail!(
            "{}: {} bytes, expected a {what} of at most {max} bytes",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("{}: cannot read {what}", path.display()))
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(vmattest_store::write_atomic(path, bytes)?)
}

pub fn now() -> vmattest_core::record::UnixTime {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    vmattest_core::record::UnixTime {
        secs: d.as_secs(),
        nanos: d.subsec_nanos(),
    }
}
