//! Attested key release, host side: hand a chain's secret to the server for release, and
//! receive one: quote this host over a server nonce, unwrap the answer with this TPM
//! (`TPM2_ActivateCredential`), and seal the secret to this host's PCRs at once.

use std::path::Path;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};
use serde::Serialize;
use vmattest_api::host::{KeyRelease, VmKey, VmKeyInfo, release_aad};
use vmattest_client::{Client, ClientError};
use vmattest_core::class::{Classify, ErrorClass};
use zeroize::Zeroizing;

use crate::eventlog::{self, EventLogError};
use crate::files::{self, FileError};
use crate::quotefile;
use crate::tpm::{self, TpmError};

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(transparent)]
    EventLog(#[from] EventLogError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("the released key of VM {vm}: {detail}")]
    Released { vm: String, detail: String },
}

impl Classify for ReleaseError {
    fn class(&self) -> ErrorClass {
        match self {
            ReleaseError::Client(e) => e.class(),
            ReleaseError::Tpm(e) => e.class(),
            ReleaseError::EventLog(e) => e.class(),
            ReleaseError::File(e) => e.class(),
            ReleaseError::Released { .. } => ErrorClass::Verification,
        }
    }
}

/// Has the server hold the store secret in `secret` (a secret file, or a blob sealed to this
/// host) for release to this VM's host and `release_to`.
pub fn put_key(
    c: &Client,
    vm: &str,
    secret: &Path,
    release_to: Vec<String>,
) -> Result<VmKeyInfo, ReleaseError> {
    let s = tpm::load_secret(secret)?;
    let key = VmKey {
        secret: s.to_hex().to_string(),
        release_to,
    };
    Ok(c.put_vm_key(vm, &key)?)
}

/// What a release wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Released {
    pub vm: String,
    pub host: String,
    pub out: String,
    pub sealed_to: Vec<u32>,
    pub attestation_id: i64,
}

/// Asks for `vm`'s key as `host` with a quote of this TPM (the boot PCRs, and `pcr` with its
/// events), unwraps it with this TPM and seals it to this host's `seal_pcrs` into `out`, a new
/// file (0600) that `--secret` takes.
pub fn release_key(
    c: &Client,
    vm: &str,
    host: &str,
    pcr: Option<u32>,
    seal_pcrs: &[u32],
    out: &Path,
) -> Result<Released, ReleaseError> {
    files::ensure_absent(out, "an existing file")?;
    let challenge = c.host_challenge(host)?;
    let bad = |detail: String| ReleaseError::Released {
        vm: vm.to_owned(),
        detail,
    };
    let nonce =
        hex::decode(&challenge.nonce).map_err(|_| bad("the server's nonce is not hex".into()))?;
    let (quote, events) = eventlog::quote_host(pcr, &nonce)?;
    let evidence = quotefile::host_evidence(&nonce, &quote, events);
    let r = c.release_key(vm, &KeyRelease { evidence })?;
    let field = |name: &str, v: &str| hex::decode(v).map_err(|_| bad(format!("{name} is not hex")));
    let mut local = tpm::open()?;
    let kek = local
        .activate_credential(
            &field("id_object", &r.id_object)?,
            &field("encrypted_secret", &r.encrypted_secret)?,
        )
        .map_err(TpmError::from)?;
    if kek.len() != 32 {
        return Err(bad(format!(
            "a credential of {} bytes, expected 32",
            kek.len()
        )));
    }
    let nonce = field("nonce", &r.nonce)?;
    if nonce.len() != 12 {
        return Err(bad("nonce: expected 12 bytes".into()));
    }
    let aad = release_aad(vm, host);
    let secret = Zeroizing::new(
        ChaCha20Poly1305::new(Key::from_slice(&kek))
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &field("ciphertext", &r.ciphertext)?,
                    aad: &aad,
                },
            )
            .map_err(|_| bad("it does not decrypt under the unwrapped key".into()))?,
    );
    let text = Zeroizing::new(format!("{}\n", hex::encode(secret.as_slice())));
    let blob = local
        .seal(text.as_bytes(), seal_pcrs)
        .map_err(TpmError::from)?;
    let bytes = blob
        .to_bytes()
        .map_err(vmattest_tpm::TpmError::from)
        .map_err(TpmError::from)?;
    files::write_private(out, &bytes, "sealed secret")?;
    Ok(Released {
        vm: vm.to_owned(),
        host: host.to_owned(),
        out: out.display().to_string(),
        sealed_to: seal_pcrs.to_vec(),
        attestation_id: r.attestation.id,
    })
}
