//! Signature algorithm identifiers and key ids.
//!
//! The numeric ids are part of every signed format; never renumber them.

use core::fmt;

use sha2::{Digest as _, Sha256};

/// Domain tag hashed in front of a public key to form its [`KeyId`].
pub const KEY_ID_DOMAIN: &[u8] = b"vmattest key-id v1\0";

/// Signature algorithms, with their stable wire ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigAlg {
    /// Ed25519 (RFC 8032), 64-byte signatures.
    Ed25519,
    /// ECDSA over P-384 with SHA-384; 96-byte `r || s` signatures.
    EcdsaP384,
    /// ML-DSA-65 (FIPS 204), empty context, 3309-byte signatures.
    MlDsa65,
    /// Ed25519 and ML-DSA-65 over the same message; both must verify.
    HybridEd25519MlDsa65,
}

impl SigAlg {
    pub const ALL: [SigAlg; 4] = [
        SigAlg::Ed25519,
        SigAlg::EcdsaP384,
        SigAlg::MlDsa65,
        SigAlg::HybridEd25519MlDsa65,
    ];

    pub fn id(self) -> u8 {
        match self {
            SigAlg::Ed25519 => 1,
            SigAlg::EcdsaP384 => 2,
            SigAlg::MlDsa65 => 3,
            SigAlg::HybridEd25519MlDsa65 => 4,
        }
    }

    pub fn from_id(id: u8) -> Option<SigAlg> {
        SigAlg::ALL.into_iter().find(|a| a.id() == id)
    }

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            SigAlg::Ed25519 => "ed25519",
            SigAlg::EcdsaP384 => "p384",
            SigAlg::MlDsa65 => "ml-dsa-65",
            SigAlg::HybridEd25519MlDsa65 => "hybrid",
        }
    }

    pub fn from_name(name: &str) -> Option<SigAlg> {
        SigAlg::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for SigAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// SHA-256 over [`KEY_ID_DOMAIN`], the algorithm id and the raw public key bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// `raw_public` is the algorithm's raw public key: Ed25519 32 bytes, P-384 SEC1
    /// uncompressed 97 bytes, ML-DSA-65 1952 bytes, hybrid the Ed25519 key then the ML-DSA key.
    pub fn of_public_key(alg: SigAlg, raw_public: &[u8]) -> KeyId {
        let mut h = Sha256::new();
        h.update(KEY_ID_DOMAIN);
        h.update([alg.id()]);
        h.update((raw_public.len() as u64).to_be_bytes());
        h.update(raw_public);
        KeyId(h.finalize().into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}
