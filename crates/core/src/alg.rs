//! Hash algorithms and the digest newtype.

use core::fmt;

/// Largest digest any supported algorithm produces (SHA-384).
pub const MAX_DIGEST_LEN: usize = 48;

/// Hash algorithms with stable wire ids. Never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// BLAKE3's own tree; the image root equals `b3sum`.
    Blake3,
    /// dm-verity format 1 tree with SHA-256; the root equals `veritysetup format`.
    Sha256,
    /// dm-verity format 1 tree with SHA-384.
    Sha384,
}

impl HashAlg {
    pub const ALL: [HashAlg; 3] = [HashAlg::Blake3, HashAlg::Sha256, HashAlg::Sha384];

    pub fn id(self) -> u8 {
        match self {
            HashAlg::Blake3 => 1,
            HashAlg::Sha256 => 2,
            HashAlg::Sha384 => 3,
        }
    }

    pub fn from_id(id: u8) -> Option<HashAlg> {
        HashAlg::ALL.into_iter().find(|a| a.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Blake3 => "blake3",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
        }
    }

    pub fn from_name(name: &str) -> Option<HashAlg> {
        HashAlg::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Blake3 | HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
        }
    }

    /// Whether the tree takes a salt (dm-verity does, BLAKE3 does not).
    pub fn takes_salt(self) -> bool {
        !matches!(self, HashAlg::Blake3)
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A digest tagged with the algorithm that produced it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    alg: HashAlg,
    buf: [u8; MAX_DIGEST_LEN],
}

impl Digest {
    /// `None` when `bytes` is not exactly `alg.digest_len()` long.
    pub fn new(alg: HashAlg, bytes: &[u8]) -> Option<Digest> {
        if bytes.len() != alg.digest_len() {
            return None;
        }
        let mut buf = [0u8; MAX_DIGEST_LEN];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(Digest { alg, buf })
    }

    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.alg.digest_len()]
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// Constant-time equality, for comparing against expected values from outside.
    pub fn ct_eq(&self, other: &Digest) -> bool {
        use subtle::ConstantTimeEq as _;
        self.alg == other.alg && bool::from(self.as_bytes().ct_eq(other.as_bytes()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg, self.to_hex())
    }
}

/// Index of a 4 KiB page within an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageIndex(pub u64);

impl fmt::Display for PageIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Page size of every image tree.
pub const PAGE_SIZE: usize = 4096;

/// Whether every byte is zero. OR-folding fixed-size chunks vectorises, and the scan stops at
/// the first non-zero chunk.
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(64)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// Number of pages covering `len` bytes (the last one may be partial).
pub fn page_count(len: u64) -> u64 {
    len.div_ceil(PAGE_SIZE as u64)
}

impl HashAlg {
    /// Plain hash of the concatenation of `parts` (chain digests, not image trees).
    pub fn hash(self, parts: &[&[u8]]) -> Digest {
        use sha2::Digest as _;
        let mut buf = [0u8; MAX_DIGEST_LEN];
        let n = self.digest_len();
        match self {
            HashAlg::Blake3 => {
                let mut h = blake3::Hasher::new();
                parts.iter().for_each(|p| {
                    h.update(p);
                });
                buf[..n].copy_from_slice(h.finalize().as_bytes());
            }
            HashAlg::Sha256 => {
                let mut h = sha2::Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                buf[..n].copy_from_slice(&h.finalize());
            }
            HashAlg::Sha384 => {
                let mut h = sha2::Sha384::new();
                parts.iter().for_each(|p| h.update(p));
                buf[..n].copy_from_slice(&h.finalize());
            }
        }
        Digest { alg: self, buf }
    }

    /// The all-zero digest, standing for "no previous link".
    pub fn zero_digest(self) -> Digest {
        Digest {
            alg: self,
            buf: [0; MAX_DIGEST_LEN],
        }
    }
}
