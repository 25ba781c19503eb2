use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Serialize;
use vmattest_core::record::{MAX_NONCE_LEN, MeasurementRecord, SignatureEntry, SignedRecord};
use vmattest_core::wire::{HEADER_LEN, Kind};
use vmattest_sign::record::{RecordSigError, verify_signed};
use vmattest_sign::{PublicKey, Signer as _, keyfile};

use super::measure::measure_one;
use super::{now, parse_hex, read_capped, tree_params, write_atomic};
use crate::VerificationFailed;
use crate::args::TreeArgs;
use crate::output::{self, ImageJson};

#[derive(Debug, Serialize)]
struct RecordJson {
    record: String,
    time: String,
    nonce: String,
    key_ids: Vec<String>,
    images: Vec<ImageJson>,
}

#[derive(Debug, Serialize)]
struct VerifyJson {
    ok: bool,
    #[serde(flatten)]
    record: RecordJson,
    images_checked: bool,
}

fn record_json(path: &Path, r: &MeasurementRecord) -> RecordJson {
    RecordJson {
        record: path.display().to_string(),
        time: r.time.to_string(),
        nonce: hex::encode(&r.nonce),
        key_ids: r.key_ids.iter().map(|k| k.to_hex()).collect(),
        images: r.images.iter().map(ImageJson::from).collect(),
    }
}

pub fn sign(
    images: &[PathBuf],
    keys: &[PathBuf],
    out: &Path,
    args: &TreeArgs,
    nonce: &str,
    json: bool,
) -> anyhow::Result<()> {
    let params = tree_params(args)?;
    let nonce = parse_hex("--nonce", nonce)?;
    if nonce.len() > MAX_NONCE_LEN {
        bail!(
            "--nonce: {} bytes, expected at most {MAX_NONCE_LEN}",
            nonce.len()
        );
    }
    let signers = keys
        .iter()
        .map(|k| keyfile::read_secret_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let mut measured = Vec::with_capacity(images.len());
    for path in images {
        measured.push(measure_one(path, &params, json)?.1);
    }
    let record = MeasurementRecord {
        time: now(),
        nonce,
        key_ids: signers.iter().map(|s| s.key_id()).collect(),
        images: measured,
    };
    let mut signed = SignedRecord::new(record)?;
    let message = signed.message();
    for s in &signers {
        let signature = s.sign(&message)?;
        signed.signatures.push(SignatureEntry {
            alg: s.alg(),
            key_id: s.key_id(),
            signature,
        });
    }
    write_atomic(out, &signed.encode()?)?;
    if json {
        output::print(&record_json(out, signed.value()))
    } else {
        for m in &signed.value().images {
            println!("{}  {}  {}", m.root, m.params.alg(), m.path);
        }
        println!(
            "signed record {} by {} key(s)",
            out.display(),
            signers.len()
        );
        Ok(())
    }
}

/// Reads and decodes a signed record; a damaged file is an input error.
pub fn load(path: &Path) -> anyhow::Result<SignedRecord> {
    let bytes = read_capped(path, Kind::Signed.max_body() + HEADER_LEN, "signed record")?;
    SignedRecord::decode(&bytes).with_context(|| format!("{}", path.display()))
}

/// Checks every signature against the pinned keys.
pub fn check_signatures(
    path: &Path,
    signed: &SignedRecord,
    pubkeys: &[PathBuf],
) -> anyhow::Result<()> {
    let keys = pubkeys
        .iter()
        .map(|k| keyfile::read_public_key(k))
        .collect::<Result<Vec<PublicKey>, _>>()?;
    match verify_signed(signed, &keys) {
        Ok(()) => Ok(()),
        Err(e @ RecordSigError::UnknownSigner { .. }) => {
            Err(anyhow::Error::new(e).context(path.display().to_string()))
        }
        Err(e) => Err(VerificationFailed(format!("{}: {e}", path.display())).into()),
    }
}

pub fn verify(
    path: &Path,
    pubkeys: &[PathBuf],
    check_images: bool,
    max_age: Option<u64>,
    nonce: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let signed = load(path)?;
    let result = verify_loaded(path, &signed, pubkeys, check_images, max_age, nonce, json);
    if json {
        let out = VerifyJson {
            ok: result.is_ok(),
            record: record_json(path, signed.value()),
            images_checked: check_images,
        };
        output::print(&out)?;
    } else if result.is_ok() {
        println!(
            "OK: {} signature(s) verify; {} image(s){}",
            signed.signatures.len(),
            signed.value().images.len(),
            if check_images {
                " match their recorded roots"
            } else {
                " recorded"
            }
        );
    }
    result
}

fn verify_loaded(
    path: &Path,
    signed: &SignedRecord,
    pubkeys: &[PathBuf],
    check_images: bool,
    max_age: Option<u64>,
    nonce: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    check_signatures(path, signed, pubkeys)?;
    let record = signed.value();
    if let Some(max) = max_age {
        let age = now().secs.saturating_sub(record.time.secs);
        if age > max {
            return Err(VerificationFailed(format!(
                "{}: record is {age} s old, expected at most {max} s",
                path.display()
            ))
            .into());
        }
    }
    if let Some(n) = nonce {
        let want = parse_hex("--nonce", n)?;
        if want != record.nonce {
            return Err(VerificationFailed(format!(
                "{}: nonce {}, expected {}",
                path.display(),
                hex::encode(&record.nonce),
                n
            ))
            .into());
        }
    }
    if check_images {
        for m in &record.images {
            let (_, now) = measure_one(Path::new(&m.path), &m.params, json)?;
            if now.len != m.len || now.root != m.root {
                return Err(VerificationFailed(format!(
                    "image {}: root {} ({} bytes), recorded {} ({} bytes)",
                    m.path, now.root, now.len, m.root, m.len
                ))
                .into());
            }
        }
    }
    Ok(())
}
