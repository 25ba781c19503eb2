use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;
use vmattest_core::sig::SigAlg;
use vmattest_sign::{PublicKey, SecretKey, Signer, keyfile};

use crate::output;

#[derive(Debug, Serialize)]
struct KeyJson {
    alg: &'static str,
    key_id: String,
    secret: Option<String>,
    public: Option<String>,
}

/// `PATH.pub` beside a private key at `PATH`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

pub fn keygen(alg: &str, out: &Path, json: bool) -> anyhow::Result<()> {
    let Some(alg) = SigAlg::from_name(alg) else {
        bail!("--alg {alg:?}: unknown key algorithm, expected ed25519, p384, ml-dsa-65 or hybrid");
    };
    let pub_path = public_path(out);
    for p in [out, pub_path.as_path()] {
        if p.exists() {
            bail!(
                "{}: already exists; refusing to overwrite a key",
                p.display()
            );
        }
    }
    let key = SecretKey::generate(alg)?;
    keyfile::write_secret_key(out, &key)?;
    keyfile::write_public_key(&pub_path, &key.public_key())?;
    let key_id = key.key_id().to_hex();
    if json {
        output::print(&KeyJson {
            alg: alg.name(),
            key_id,
            secret: Some(out.display().to_string()),
            public: Some(pub_path.display().to_string()),
        })
    } else {
        println!(
            "{alg} key {key_id}\n  private {} (mode 0600)\n  public  {}",
            out.display(),
            pub_path.display()
        );
        Ok(())
    }
}

pub fn pubkey(key: &Path, out: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let secret = keyfile::read_secret_key(key)?;
    let public: PublicKey = secret.public_key();
    if let Some(out) = out {
        keyfile::write_public_key(out, &public)?;
    }
    if json {
        output::print(&KeyJson {
            alg: public.alg().name(),
            key_id: public.key_id().to_hex(),
            secret: None,
            public: out.map(|p| p.display().to_string()),
        })
    } else {
        if out.is_none() {
            print!("{}", public.to_pem());
        }
        Ok(())
    }
}

/// The signers of a take: key files, plus the TPM-resident key with `tpm`.
pub fn load_signers(keys: &[PathBuf], tpm: bool) -> anyhow::Result<Vec<Box<dyn Signer>>> {
    let mut out: Vec<Box<dyn Signer>> = Vec::with_capacity(keys.len() + 1);
    for k in keys {
        out.push(Box::new(keyfile::read_secret_key(k)?));
    }
    if tpm {
        out.push(Box::new(super::tpm::signer()?));
    }
    Ok(out)
}

/// The signer of evidence and snapshot reports: `--key FILE` or `--signer tpm`.
pub fn evidence_signer(s: &crate::args::EvidenceSigner) -> anyhow::Result<Box<dyn Signer>> {
    match (&s.key, s.signer.as_deref()) {
        (Some(k), None) => Ok(Box::new(keyfile::read_secret_key(k)?)),
        (None, Some("tpm")) => Ok(Box::new(super::tpm::signer()?)),
        _ => anyhow::bail!("give one of --key KEY and --signer tpm"),
    }
}
