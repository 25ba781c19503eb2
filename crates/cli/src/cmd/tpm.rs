//! `vmattest tpm ...`: the host TPM's keys, PCRs, quotes and sealing.

use std::path::Path;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use vmattest_api::{CERTIFY_FORMAT, CertifyDoc};
use vmattest_quote::KeyCertError;
use vmattest_tpm::{SealedBlob, Tpm, TpmConfig, TpmError};

use super::write_atomic;
use crate::VerificationFailed;
use crate::args::TpmCommand;
use crate::output;

/// Largest quote file accepted.
const MAX_QUOTE_FILE: u64 = 64 * 1024;
/// Largest secret that fits a TPM sealed object.
const MAX_SECRET: u64 = 128;

pub(super) fn open() -> anyhow::Result<Tpm> {
    if !cfg!(feature = "tpm") {
        return Err(TpmError::NotBuilt.into());
    }
    let config = TpmConfig::from_env().map_err(TpmError::from)?;
    Ok(Tpm::open(&config)?)
}

/// A store secret from a secret file, or from a blob sealed by `tpm seal` (unsealed by this
/// host's TPM: refused, naming the PCR, when the host's state differs from sealing time).
pub fn load_secret(path: &Path) -> anyhow::Result<vmattest_store::StoreSecret> {
    let mut head = [0u8; 8];
    let sealed = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head == vmattest_tpm::SEALED_MAGIC;
    if !sealed {
        return Ok(vmattest_store::StoreSecret::load(path)?);
    }
    let bytes = read_capped(path, 64 * 1024, "sealed secret")?;
    let blob = SealedBlob::from_bytes(&bytes)?;
    let text = open()?.unseal(&blob).map_err(tpm_err)?;
    Ok(vmattest_store::StoreSecret::parse(
        &text,
        &format!("sealed secret {}", path.display()),
    )?)
}

/// The TPM-resident signing key as a chain signer.
pub fn signer() -> anyhow::Result<vmattest_tpm::TpmSigner> {
    let tpm = open()?;
    Ok(vmattest_tpm::TpmSigner::new(tpm)?)
}

fn tpm_err(e: TpmError) -> anyhow::Error {
    match e {
        TpmError::PcrMismatch { .. } => VerificationFailed(e.to_string()).into(),
        other => other.into(),
    }
}

/// "0,7,16" -> [0, 7, 16]; at most 24 distinct SHA-256 PCRs.
fn pcr_list(text: &str) -> anyhow::Result<Vec<u32>> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let n: u32 = part
            .trim()
            .parse()
            .with_context(|| format!("--pcr {text:?}: {part:?} is not a PCR index 0-23"))?;
        if n > 23 || out.contains(&n) {
            bail!("--pcr {text:?}: expected distinct PCR indices 0-23, found {n}");
        }
        out.push(n);
    }
    out.sort_unstable();
    Ok(out)
}

fn nonce(text: &str) -> anyhow::Result<Vec<u8>> {
    let n = hex::decode(text).with_context(|| format!("--nonce {text:?}: expected hex"))?;
    if n.is_empty() || n.len() > 64 {
        bail!("--nonce: expected 1 to 64 bytes, found {}", n.len());
    }
    Ok(n)
}

fn read_capped(path: &Path, max: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{what} {}", path.display()))?
        .len();
    if len > max {
        bail!(
            "{what} {}: {len} bytes, expected at most {max}",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("{what} {}", path.display()))
}

/// The quote file: JSON with hex fields (docs/FORMAT.md).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteFile {
    format: String,
    /// Marshalled TPMS_ATTEST.
    attest: String,
    /// ECDSA P-256 r || s.
    signature: String,
    pcrs: Vec<PcrValue>,
    /// Measurements into one of the quoted PCRs that a verifier replays (`snapshot take
    /// --bind-pcr`); absent for plain `tpm quote`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    events: Vec<super::bind::Event>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PcrValue {
    index: u32,
    sha256: String,
}

const QUOTE_FORMAT: &str = "vmattest-tpm-quote/1";

pub(super) fn certify_path(pubkey: &Path) -> std::path::PathBuf {
    let mut p = pubkey.as_os_str().to_owned();
    p.push(".certify");
    p.into()
}

fn verify_key(pubkey: &Path, ak: &Path, certify: &Path, json: bool) -> anyhow::Result<()> {
    let key = vmattest_sign::keyfile::read_public_key(pubkey)?;
    let ak_bytes = read_capped(ak, 4096, "attestation key")?;
    let text = read_capped(certify, MAX_QUOTE_FILE, "certification")?;
    let c: CertifyDoc = serde_json::from_slice(&text)
        .with_context(|| format!("certification {}", certify.display()))?;
    let [tpmt, attest, signature, nonce] = c
        .decode()
        .map_err(|e| anyhow::anyhow!("certification {}: {e}", certify.display()))?;
    let cert = vmattest_quote::KeyCertification {
        key: &tpmt,
        attest: &attest,
        signature: &signature,
        nonce: &nonce,
    };
    let name = vmattest_quote::check_key_certification(key.raw(), &ak_bytes, &cert).map_err(
        |e| match e {
            KeyCertError::Ak(_) | KeyCertError::AkNotRestricted => {
                anyhow::anyhow!("attestation key {}: {e}", ak.display())
            }
            KeyCertError::Key(_) | KeyCertError::Signature(_) => {
                anyhow::anyhow!("certification {}: {e}", certify.display())
            }
            other => VerificationFailed(format!("{}: {other}", pubkey.display())).into(),
        },
    )?;
    let certified_name = name;
    if json {
        return output::print(&serde_json::json!({
            "ok": true, "key_id": key.key_id().to_hex(), "tpm_name": hex::encode(&certified_name),
        }));
    }
    println!(
        "OK: {} ({}) is a non-exportable key of the TPM whose attestation key is pinned; name {}",
        key.key_id().to_hex(),
        key.alg().name(),
        hex::encode(&certified_name)
    );
    Ok(())
}

pub fn run(cmd: TpmCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        TpmCommand::Info => {
            let mut tpm = open()?;
            let info = tpm.info()?;
            let ek = hex::encode(tpm.ek_public()?);
            let cert = tpm.ek_certificate().map(hex::encode);
            if json {
                output::print(&serde_json::json!({
                    "manufacturer": info.manufacturer, "firmware_version": info.firmware_version,
                    "pcr_banks": info.pcr_banks, "ek_public": ek, "ek_certificate": cert,
                }))
            } else {
                println!(
                    "TPM {} firmware {:#x}, PCR banks {}\n  EK (ECC P-256) {ek}\n  EK certificate: {}",
                    info.manufacturer,
                    info.firmware_version,
                    info.pcr_banks.join(", "),
                    cert.as_ref()
                        .map_or("none provisioned".to_owned(), |c| format!(
                            "{} bytes (DER)",
                            c.len() / 2
                        ))
                );
                Ok(())
            }
        }
        TpmCommand::Keygen { out } => {
            use vmattest_sign::Signer as _;
            // One connection at a time: the EK first, then the signer's own.
            let (ek, ek_certificate) = {
                let mut tpm = open()?;
                (
                    hex::encode(tpm.ek_public()?),
                    tpm.ek_certificate().map(hex::encode),
                )
            };
            let signer = signer()?;
            let key = signer.public_key();
            let mut nonce = [0u8; 32];
            getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("OS randomness: {e}"))?;
            let c = signer.certify(&nonce)?;
            let cert = CertifyDoc {
                format: CERTIFY_FORMAT.into(),
                key: hex::encode(&signer.tpm_public().tpmt_public),
                attest: hex::encode(&c.attest),
                signature: hex::encode(c.signature.to_bytes()),
                nonce: hex::encode(nonce),
                ek,
                ek_certificate,
            };
            vmattest_sign::keyfile::write_public_key(&out, &key)?;
            write_atomic(&certify_path(&out), &serde_json::to_vec_pretty(&cert)?)?;
            if json {
                output::print(&serde_json::json!({
                    "out": out.display().to_string(), "alg": key.alg().name(), "key_id": key.key_id().to_hex(),
                }))
            } else {
                println!(
                    "TPM signing key {} ({}) -> {}",
                    key.key_id().to_hex(),
                    key.alg().name(),
                    out.display()
                );
                Ok(())
            }
        }
        TpmCommand::Ak { out } => {
            let ak = open()?.attestation_key()?;
            write_atomic(&out, &ak.tpmt_public)?;
            let name = hex::encode(&ak.name);
            if json {
                output::print(&serde_json::json!({"out": out.display().to_string(), "name": name}))
            } else {
                println!("attestation key {name} -> {}", out.display());
                Ok(())
            }
        }
        TpmCommand::Extend { pcr, file } => {
            if pcr > 23 {
                bail!("--pcr {pcr}: expected 0-23");
            }
            let bytes = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            let mut tpm = open()?;
            tpm.pcr_extend(pcr, &digest)?;
            let value = tpm.pcr_read(vmattest_tpm::PcrBank::Sha256, &[pcr])?;
            let value = value.first().map(hex::encode).unwrap_or_default();
            if json {
                output::print(
                    &serde_json::json!({"pcr": pcr, "extended_with": hex::encode(digest), "value": value}),
                )
            } else {
                println!("PCR {pcr} extended with {} -> {value}", hex::encode(digest));
                Ok(())
            }
        }
        TpmCommand::Quote { pcr, nonce: n, out } => {
            let pcrs = pcr_list(&pcr)?;
            let q = open()?.quote(&pcrs, &nonce(&n)?)?;
            write_quote(&out, &q, Vec::new())?;
            if json {
                output::print(
                    &serde_json::json!({"out": out.display().to_string(), "pcrs": q.pcrs}),
                )
            } else {
                println!("quote of sha256:{pcr} -> {}", out.display());
                Ok(())
            }
        }
        TpmCommand::VerifyKey {
            pubkey,
            ak,
            certify,
        } => {
            let certify = certify.unwrap_or_else(|| certify_path(&pubkey));
            verify_key(&pubkey, &ak, &certify, json)
        }
        TpmCommand::VerifyQuote {
            quote,
            ak,
            nonce: n,
        } => verify_quote(&quote, &ak, &nonce(&n)?, json),
        TpmCommand::Seal { pcr, input, out } => {
            let pcrs = pcr_list(&pcr)?;
            let secret = zeroize::Zeroizing::new(read_capped(&input, MAX_SECRET, "secret")?);
            let blob = open()?.seal(&secret, &pcrs)?;
            write_atomic(&out, &blob.to_bytes()?)?;
            if json {
                output::print(&serde_json::json!({"out": out.display().to_string(), "pcrs": pcrs}))
            } else {
                println!("sealed to sha256:{pcr} -> {}", out.display());
                Ok(())
            }
        }
        TpmCommand::Unseal { blob, out } => {
            let bytes = read_capped(&blob, 64 * 1024, "sealed blob")?;
            let blob = SealedBlob::from_bytes(&bytes)?;
            let secret = open()?.unseal(&blob).map_err(tpm_err)?;
            write_private(&out, &secret)?;
            if json {
                output::print(&serde_json::json!({"out": out.display().to_string()}))
            } else {
                println!("unsealed -> {} (mode 0600)", out.display());
                Ok(())
            }
        }
    }
}

/// Writes a quote file (docs/FORMAT.md).
pub(super) fn write_quote(
    out: &Path,
    q: &vmattest_tpm::Quote,
    events: Vec<super::bind::Event>,
) -> anyhow::Result<()> {
    let file = QuoteFile {
        format: QUOTE_FORMAT.into(),
        attest: hex::encode(&q.attest),
        signature: hex::encode(q.signature.to_bytes()),
        pcrs: q
            .pcrs
            .iter()
            .zip(&q.pcr_values)
            .map(|(&index, v)| PcrValue {
                index,
                sha256: hex::encode(v),
            })
            .collect(),
        events,
    };
    write_atomic(out, &serde_json::to_vec_pretty(&file)?)
}

fn verify_quote(quote: &Path, ak: &Path, nonce: &[u8], json: bool) -> anyhow::Result<()> {
    let ak_bytes = read_capped(ak, 4096, "attestation key")?;
    let ak = vmattest_quote::parse_public_ecc_p256(&ak_bytes)
        .with_context(|| format!("attestation key {}", ak.display()))?;
    let text = read_capped(quote, MAX_QUOTE_FILE, "quote")?;
    let file: QuoteFile =
        serde_json::from_slice(&text).with_context(|| format!("quote {}", quote.display()))?;
    if file.format != QUOTE_FORMAT {
        bail!(
            "quote {}: format {:?}, expected {QUOTE_FORMAT:?}",
            quote.display(),
            file.format
        );
    }
    let field = |name: &str, hexed: &str| {
        hex::decode(hexed).with_context(|| format!("quote {}: {name} is not hex", quote.display()))
    };
    let attest = field("attest", &file.attest)?;
    let signature = vmattest_quote::Signature::from_raw(&field("signature", &file.signature)?)
        .with_context(|| format!("quote {}: signature", quote.display()))?;
    let mut pcrs = Vec::with_capacity(file.pcrs.len());
    for p in &file.pcrs {
        let v: [u8; 32] = field("pcr value", &p.sha256)?
            .try_into()
            .map_err(|v: Vec<u8>| {
                anyhow::anyhow!(
                    "quote {}: PCR {} value of {} bytes, expected 32",
                    quote.display(),
                    p.index,
                    v.len()
                )
            })?;
        pcrs.push((p.index, v));
    }
    let q = vmattest_quote::verify_quote(&ak, &attest, &signature, nonce, &pcrs)
        .map_err(|e| VerificationFailed(format!("quote {}: {e}", quote.display())))?;
    // The events must replay to the quoted value of their PCR.
    let mut bound: Vec<u32> = file.events.iter().map(|e| e.pcr).collect();
    bound.dedup();
    for pcr in bound {
        let want = super::bind::replay(&file.events, pcr)
            .map_err(|e| VerificationFailed(format!("quote {}: {e:#}", quote.display())))?;
        let quoted = pcrs.iter().find(|(i, _)| *i == pcr).map(|(_, v)| *v);
        if quoted != Some(want) {
            return Err(VerificationFailed(format!(
                "quote {}: the events of PCR {pcr} replay to {}, the quoted value is {}",
                quote.display(),
                hex::encode(want),
                quoted
                    .map(hex::encode)
                    .unwrap_or_else(|| "not quoted".into())
            ))
            .into());
        }
    }
    if json {
        return output::print(&serde_json::json!({
            "ok": true, "pcrs": q.pcr_indices, "pcr_digest": hex::encode(q.pcr_digest), "events": file.events,
            "values": file.pcrs.iter().map(|p| (p.index.to_string(), p.sha256.clone())).collect::<std::collections::BTreeMap<_, _>>(),
        }));
    }
    println!(
        "OK: quote of sha256:{} signed by the pinned attestation key over the nonce",
        q.pcr_indices
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    for p in &file.pcrs {
        println!("  PCR {:>2} {}", p.index, p.sha256);
    }
    for e in &file.events {
        println!("  PCR {:>2} event {} {}", e.pcr, e.kind, e.value);
    }
    Ok(())
}

/// A new file of mode 0600 holding `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("{}", path.display()))
}
