//! vmattest signing keys: Ed25519, ECDSA P-384, ML-DSA-65 and an Ed25519 + ML-DSA-65 hybrid.
//!
//! [`SecretKey`] implements the small [`Signer`] trait; [`PublicKey`] verifies;
//! [`signing::sign`] signs any signable object. Keys travel as
//! PKCS#8 / SPKI PEM (byte layouts in docs/KEYS.md). Only [`keyfile`] touches the file system.
//! Randomness comes from the operating system only.

mod ecdsa_p384;
mod ed25519;
mod error;
pub mod hybrid;
pub mod keyfile;
mod ml_dsa_65;
mod pem;
pub mod record;
pub mod signing;

use std::fmt;

pub use vmattest_core::sig::{KeyId, SigAlg};
use zeroize::Zeroizing;

pub use crate::error::SignError;
use crate::pem::{Component, Kind, PRIVATE_LABEL, PUBLIC_LABEL};

/// Where key text came from when it was not read from a file.
const TEXT_ORIGIN: &str = "PEM text";

/// Something that signs with one key (a local key, or later an HSM or agent).
pub trait Signer: Send + Sync + fmt::Debug {
    fn alg(&self) -> SigAlg;
    fn public_key(&self) -> PublicKey;
    fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError>;
}

/// The length in bytes of every signature made with `alg`.
pub fn signature_len(alg: SigAlg) -> usize {
    match alg {
        SigAlg::Ed25519 => ed25519::SIG_LEN,
        SigAlg::EcdsaP384 => ecdsa_p384::SIG_LEN,
        SigAlg::MlDsa65 => ml_dsa_65::SIG_LEN,
        SigAlg::HybridEd25519MlDsa65 => hybrid::SIG_LEN,
    }
}

/// The length in bytes of a raw public key for `alg`.
pub fn public_key_len(alg: SigAlg) -> usize {
    match alg {
        SigAlg::Ed25519 => ed25519::PUBLIC_LEN,
        SigAlg::EcdsaP384 => ecdsa_p384::PUBLIC_LEN,
        SigAlg::MlDsa65 => ml_dsa_65::PUBLIC_LEN,
        SigAlg::HybridEd25519MlDsa65 => hybrid::PUBLIC_LEN,
    }
}

/// A validated public key: its algorithm and raw bytes (see [`KeyId::of_public_key`]).
#[derive(Clone)]
pub struct PublicKey {
    alg: SigAlg,
    raw: Vec<u8>,
    /// The decoded Ed25519 point, kept after the first verification: decoding and checking it
    /// costs as much as the verification itself.
    ed25519: std::sync::OnceLock<Option<ed25519_dalek::VerifyingKey>>,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &PublicKey) -> bool {
        self.alg == other.alg && self.raw == other.raw
    }
}

impl Eq for PublicKey {}

impl PublicKey {
    fn new(alg: SigAlg, raw: Vec<u8>) -> PublicKey {
        PublicKey {
            alg,
            raw,
            ed25519: std::sync::OnceLock::new(),
        }
    }

    pub fn alg(&self) -> SigAlg {
        self.alg
    }

    /// Ed25519 32 bytes; P-384 SEC1 uncompressed 97 bytes; ML-DSA-65 1952 bytes; hybrid the
    /// Ed25519 key then the ML-DSA-65 key.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn key_id(&self) -> KeyId {
        KeyId::of_public_key(self.alg, &self.raw)
    }

    /// The key as a chain's links and revocations carry it.
    pub fn to_chain_key(&self) -> vmattest_core::chain::ChainKey {
        vmattest_core::chain::ChainKey {
            alg: self.alg,
            raw: self.raw.clone(),
        }
    }

    /// Checks the length and, where the algorithm has any, that the key is a valid point.
    pub fn from_raw(alg: SigAlg, raw: &[u8]) -> Result<Self, SignError> {
        match alg {
            SigAlg::Ed25519 => ed25519::check_public(raw).map(drop)?,
            SigAlg::EcdsaP384 => ecdsa_p384::check_public(raw).map(drop)?,
            SigAlg::MlDsa65 => ml_dsa_65::check_public(raw).map(drop)?,
            SigAlg::HybridEd25519MlDsa65 => hybrid::split_public(raw).map(drop)?,
        }
        Ok(PublicKey::new(alg, raw.to_vec()))
    }

    /// Fails with [`SignError::SignatureLength`] for a signature of the wrong size and with
    /// [`SignError::BadSignature`] for one that does not verify.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), SignError> {
        let expected = signature_len(self.alg);
        if sig.len() != expected {
            return Err(SignError::SignatureLength {
                alg: self.alg,
                expected,
                found: sig.len(),
            });
        }
        let ok = match self.alg {
            SigAlg::Ed25519 => self
                .ed25519
                .get_or_init(|| ed25519::check_public(&self.raw).ok())
                .as_ref()
                .is_some_and(|vk| ed25519::verify_with(vk, msg, sig)),
            SigAlg::EcdsaP384 => ecdsa_p384::verify(&self.raw, msg, sig),
            SigAlg::MlDsa65 => ml_dsa_65::verify(&self.raw, msg, sig),
            SigAlg::HybridEd25519MlDsa65 => hybrid::verify(&self.raw, msg, sig),
        };
        if ok {
            Ok(())
        } else {
            Err(SignError::BadSignature {
                alg: self.alg,
                key_id: self.key_id(),
            })
        }
    }

    /// SPKI PEM (label `PUBLIC KEY`); the hybrid is two blocks, Ed25519 first.
    pub fn to_pem(&self) -> String {
        let ders = match self.alg {
            SigAlg::Ed25519 => vec![ed25519::spki_der(&self.raw)],
            SigAlg::EcdsaP384 => vec![ecdsa_p384::spki_der(&self.raw)],
            SigAlg::MlDsa65 => vec![ml_dsa_65::spki_der(&self.raw)],
            SigAlg::HybridEd25519MlDsa65 => hybrid::spki_ders(&self.raw).to_vec(),
        };
        let mut out = String::new();
        for der in &ders {
            pem::encode_into(&mut out, PUBLIC_LABEL, der);
        }
        out
    }

    pub fn from_pem(text: &str) -> Result<Self, SignError> {
        Self::from_pem_at(text, TEXT_ORIGIN)
    }

    pub(crate) fn from_pem_at(text: &str, origin: &str) -> Result<Self, SignError> {
        let blocks = pem::decode_blocks(text, Kind::Public, origin)?;
        let mut keys = Vec::with_capacity(blocks.len().min(2));
        for (i, block) in blocks.iter().enumerate() {
            if i >= 2 {
                break;
            }
            keys.push(pem::decode_public(block, i + 1, origin)?);
        }
        match (keys.as_slice(), blocks.len()) {
            ([(alg, raw)], 1) => Ok(PublicKey::new(*alg, raw.clone())),
            ([(SigAlg::Ed25519, ed), (SigAlg::MlDsa65, ml)], 2) => Ok(PublicKey::new(
                SigAlg::HybridEd25519MlDsa65,
                [ed.as_slice(), ml.as_slice()].concat(),
            )),
            _ => Err(layout_error(
                origin,
                &keys.iter().map(|(alg, _)| *alg).collect::<Vec<_>>(),
                blocks.len(),
            )),
        }
    }
}

fn layout_error(origin: &str, algs: &[SigAlg], count: usize) -> SignError {
    let found = if count == 2 {
        format!(
            "{} then {}",
            algs.first().map_or("?", |a| a.name()),
            algs.get(1).map_or("?", |a| a.name())
        )
    } else {
        format!("{count} PEM blocks")
    };
    SignError::BlockLayout {
        origin: origin.to_owned(),
        expected: "one PEM block, or two (ed25519 then ml-dsa-65) for a hybrid key",
        found,
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("alg", &self.alg)
            .field("key_id", &self.key_id())
            .finish()
    }
}

enum Inner {
    Ed25519(ed25519::Secret),
    P384(ecdsa_p384::Secret),
    MlDsa65(ml_dsa_65::Secret),
    Hybrid(hybrid::Secret),
}

/// A private key held in memory; its key material is zeroized on drop and never printed.
pub struct SecretKey {
    inner: Inner,
    public: PublicKey,
}

impl SecretKey {
    fn new(inner: Inner) -> Self {
        let (alg, raw) = match &inner {
            Inner::Ed25519(k) => (SigAlg::Ed25519, ed25519::public_raw(k)),
            Inner::P384(k) => (SigAlg::EcdsaP384, ecdsa_p384::public_raw(k)),
            Inner::MlDsa65(k) => (SigAlg::MlDsa65, ml_dsa_65::public_raw(k)),
            Inner::Hybrid(k) => (SigAlg::HybridEd25519MlDsa65, hybrid::public_raw(k)),
        };
        SecretKey {
            inner,
            public: PublicKey::new(alg, raw),
        }
    }

    /// A fresh key from OS randomness.
    pub fn generate(alg: SigAlg) -> Result<Self, SignError> {
        let inner = match alg {
            SigAlg::Ed25519 => Inner::Ed25519(ed25519::generate()?),
            SigAlg::EcdsaP384 => Inner::P384(ecdsa_p384::generate()?),
            SigAlg::MlDsa65 => Inner::MlDsa65(ml_dsa_65::generate()?),
            SigAlg::HybridEd25519MlDsa65 => Inner::Hybrid(hybrid::generate()?),
        };
        Ok(Self::new(inner))
    }

    /// Unencrypted PKCS#8 PEM (label `PRIVATE KEY`); the hybrid is two blocks, Ed25519 first.
    pub fn to_pem(&self) -> Zeroizing<String> {
        let ders: Vec<Zeroizing<Vec<u8>>> = match &self.inner {
            Inner::Ed25519(k) => vec![ed25519::pkcs8_der(k)],
            Inner::P384(k) => vec![ecdsa_p384::pkcs8_der(k)],
            Inner::MlDsa65(k) => vec![ml_dsa_65::pkcs8_der(k)],
            Inner::Hybrid(k) => hybrid::pkcs8_ders(k).into_iter().collect(),
        };
        let len = ders
            .iter()
            .map(|d| pem::encoded_len(PRIVATE_LABEL, d.len()))
            .sum();
        let mut out = Zeroizing::new(String::with_capacity(len));
        for der in &ders {
            pem::encode_into(&mut out, PRIVATE_LABEL, der);
        }
        out
    }

    pub fn from_pem(text: &str) -> Result<Self, SignError> {
        Self::from_pem_at(text, TEXT_ORIGIN)
    }

    pub(crate) fn from_pem_at(text: &str, origin: &str) -> Result<Self, SignError> {
        let blocks = pem::decode_blocks(text, Kind::Private, origin)?;
        let mut parts = Vec::with_capacity(blocks.len().min(2));
        for (i, block) in blocks.iter().enumerate() {
            if i >= 2 {
                break;
            }
            parts.push(pem::decode_private(block, i + 1, origin)?);
        }
        let algs: Vec<SigAlg> = parts.iter().map(Component::alg).collect();
        let count = blocks.len();
        let mut parts = parts.into_iter();
        let inner = match (parts.next(), parts.next(), count) {
            (Some(Component::Ed25519(k)), None, 1) => Inner::Ed25519(k),
            (Some(Component::P384(k)), None, 1) => Inner::P384(k),
            (Some(Component::MlDsa65(k)), None, 1) => Inner::MlDsa65(k),
            (Some(Component::Ed25519(ed25519)), Some(Component::MlDsa65(ml_dsa)), 2) => {
                Inner::Hybrid(hybrid::Secret { ed25519, ml_dsa })
            }
            _ => return Err(layout_error(origin, &algs, count)),
        };
        Ok(Self::new(inner))
    }
}

impl Signer for SecretKey {
    fn alg(&self) -> SigAlg {
        self.public.alg
    }

    fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        match &self.inner {
            Inner::Ed25519(k) => Ok(ed25519::sign(k, msg)),
            Inner::P384(k) => ecdsa_p384::sign(k, msg),
            Inner::MlDsa65(k) => ml_dsa_65::sign(k, msg),
            Inner::Hybrid(k) => hybrid::sign(k, msg),
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("alg", &self.public.alg)
            .field("key_id", &self.public.key_id())
            .finish_non_exhaustive()
    }
}
