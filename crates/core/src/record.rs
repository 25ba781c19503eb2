//! Measurement records and the signed envelope shared by every signed object.
//!
//! A signature covers `SIGNATURE_DOMAIN || record object`, where the record object is the
//! full canonical encoding (magic, kind, version, length, body; see `wire`). The domain tag
//! keeps these signatures from being valid for any other protocol, and the kind and version
//! inside the object keep them from being valid for any other vmattest object.

use crate::alg::{Digest, page_count};
use crate::class::{Classify, ErrorClass};
use crate::sig::{KeyId, SigAlg};
use crate::tree::{MAX_SALT_LEN, TreeParams};
use crate::wire::{Kind, WireError, Writer};

/// Prefix of every signed message.
pub const SIGNATURE_DOMAIN: &[u8] = b"vmattest signature v1\0";
pub const MAX_IMAGES: usize = 4096;
pub const MAX_PATH_LEN: usize = 4096;
pub const MAX_NONCE_LEN: usize = 64;
pub const MAX_SIGNATURES: usize = 8;
pub const MAX_SIGNATURE_LEN: usize = 8192;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{what}: {found} entries, expected 1 to {max}")]
    Count {
        what: &'static str,
        max: usize,
        found: usize,
    },
    #[error(
        "signature {index} is by key {found}, which the record does not name; it names {expected}"
    )]
    UnnamedSigner {
        index: usize,
        expected: String,
        found: KeyId,
    },
    /// A signed object whose signature count differs from the number of keys it names: it
    /// claims signers that did not sign (or carries signatures it does not claim).
    #[error("signatures: {found} entries, expected one per named key ({named})")]
    SignerCount { named: usize, found: usize },
    /// An object whose parts disagree (a rebase over a link of another seq or algorithm).
    #[error("{0}")]
    Inconsistent(String),
}

impl Classify for RecordError {
    fn class(&self) -> ErrorClass {
        match self {
            RecordError::Wire(e) => e.class(),
            RecordError::Count { .. } | RecordError::Inconsistent(_) => ErrorClass::Input,
            // The object commits to its signers; signatures that differ from them fail it.
            RecordError::UnnamedSigner { .. } | RecordError::SignerCount { .. } => {
                ErrorClass::Verification
            }
        }
    }
}

/// Wall-clock time, supplied by the caller (the core has no clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixTime {
    pub secs: u64,
    pub nanos: u32,
}

/// One measured image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMeasurement {
    /// The name the image was measured under (as given on the command line).
    pub path: String,
    pub params: TreeParams,
    pub len: u64,
    pub root: Digest,
}

impl ImageMeasurement {
    pub fn pages(&self) -> u64 {
        page_count(self.len)
    }
}

/// Image roots at one instant, named signers, optional verifier nonce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementRecord {
    pub time: UnixTime,
    pub nonce: Vec<u8>,
    pub key_ids: Vec<KeyId>,
    pub images: Vec<ImageMeasurement>,
}

fn count(what: &'static str, n: usize, max: usize) -> Result<(), RecordError> {
    if n == 0 || n > max {
        return Err(RecordError::Count {
            what,
            max,
            found: n,
        });
    }
    Ok(())
}

impl MeasurementRecord {
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        count("images", self.images.len(), MAX_IMAGES)?;
        count("key ids", self.key_ids.len(), MAX_SIGNATURES)?;
        if self.nonce.len() > MAX_NONCE_LEN {
            return Err(RecordError::Count {
                what: "nonce bytes",
                max: MAX_NONCE_LEN,
                found: self.nonce.len(),
            });
        }
        let mut w = Writer::new();
        w.u64(self.time.secs)
            .u32(self.time.nanos)
            .bytes(&self.nonce);
        w.u8(u8::try_from(self.key_ids.len()).unwrap_or(u8::MAX));
        for k in &self.key_ids {
            w.raw(&k.0);
        }
        w.u32(u32::try_from(self.images.len()).unwrap_or(u32::MAX));
        for im in &self.images {
            if im.path.len() > MAX_PATH_LEN {
                return Err(RecordError::Count {
                    what: "path bytes",
                    max: MAX_PATH_LEN,
                    found: im.path.len(),
                });
            }
            w.bytes(im.path.as_bytes())
                .u8(im.params.alg().id())
                .bytes(im.params.salt())
                .u64(im.len)
                .raw(im.root.as_bytes());
        }
        Ok(w.envelope(Kind::MeasurementRecord))
    }

    pub fn decode(bytes: &[u8]) -> Result<MeasurementRecord, RecordError> {
        let mut r = crate::wire::open(bytes, Kind::MeasurementRecord)?;
        let secs = r.u64("time seconds")?;
        let at = r.offset();
        let nanos = r.u32("time nanoseconds")?;
        if nanos >= 1_000_000_000 {
            return Err(r
                .bad("time nanoseconds", at, "expected below 1000000000", nanos)
                .into());
        }
        let nonce = r.bytes("nonce", MAX_NONCE_LEN)?.to_vec();
        let at = r.offset();
        let nkeys = usize::from(r.u8("key id count")?);
        if nkeys == 0 || nkeys > MAX_SIGNATURES {
            return Err(r.bad("key id count", at, "expected 1 to 8", nkeys).into());
        }
        let mut key_ids = Vec::with_capacity(nkeys);
        for _ in 0..nkeys {
            let mut k = [0u8; 32];
            k.copy_from_slice(r.take("key id", 32)?);
            key_ids.push(KeyId(k));
        }
        let n = r.len32("image count", MAX_IMAGES)?;
        if n == 0 {
            return Err(RecordError::Count {
                what: "images",
                max: MAX_IMAGES,
                found: 0,
            });
        }
        let mut images = Vec::with_capacity(n);
        for _ in 0..n {
            let path = r.string("image path", MAX_PATH_LEN)?.to_owned();
            let alg = crate::tree::read_alg(&mut r)?;
            let at = r.offset();
            let salt = r.bytes("salt", MAX_SALT_LEN)?;
            let params = TreeParams::new(alg, salt)
                .map_err(|e| r.bad("salt", at, "expected no salt for blake3", e))?;
            let len = r.u64("image length")?;
            let at = r.offset();
            let root = Digest::new(alg, r.take("image root", alg.digest_len())?)
                .ok_or_else(|| r.bad("image root", at, "expected a digest", "short"))?;
            images.push(ImageMeasurement {
                path,
                params,
                len,
                root,
            });
        }
        r.finish(Kind::MeasurementRecord)?;
        Ok(MeasurementRecord {
            time: UnixTime { secs, nanos },
            nonce,
            key_ids,
            images,
        })
    }
}

/// One signature over a signed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureEntry {
    pub alg: SigAlg,
    pub key_id: KeyId,
    pub signature: Vec<u8>,
}

/// An object that can be signed: it has a canonical encoding and names its signers.
pub trait Signable: Sized {
    const KIND: Kind;
    fn encode(&self) -> Result<Vec<u8>, RecordError>;
    fn decode(bytes: &[u8]) -> Result<Self, RecordError>;
    fn key_ids(&self) -> &[KeyId];
}

impl Signable for MeasurementRecord {
    const KIND: Kind = Kind::MeasurementRecord;
    fn encode(&self) -> Result<Vec<u8>, RecordError> {
        MeasurementRecord::encode(self)
    }
    fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        MeasurementRecord::decode(bytes)
    }
    fn key_ids(&self) -> &[KeyId] {
        &self.key_ids
    }
}

/// A canonical object plus one signature per key it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed<T> {
    /// The object exactly as signed.
    object_bytes: Vec<u8>,
    value: T,
    pub signatures: Vec<SignatureEntry>,
}

/// A signed measurement record.
pub type SignedRecord = Signed<MeasurementRecord>;

/// The message a signer signs for `object` (a complete canonical object).
pub fn signing_message(object: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + object.len());
    m.extend_from_slice(SIGNATURE_DOMAIN);
    m.extend_from_slice(object);
    m
}

impl<T: Signable> Signed<T> {
    /// Starts an envelope for `value`; add one signature per named key.
    pub fn new(value: T) -> Result<Signed<T>, RecordError> {
        let object_bytes = value.encode()?;
        Ok(Signed {
            object_bytes,
            value,
            signatures: Vec::new(),
        })
    }

    pub fn value(&self) -> &T {
        &self.value
    }

    /// The signed object's canonical bytes.
    pub fn object_bytes(&self) -> &[u8] {
        &self.object_bytes
    }

    /// What every signature covers.
    pub fn message(&self) -> Vec<u8> {
        signing_message(&self.object_bytes)
    }

    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        self.check_signers()?;
        let mut w = Writer::new();
        w.bytes(&self.object_bytes)
            .u8(u8::try_from(self.signatures.len()).unwrap_or(u8::MAX));
        for s in &self.signatures {
            w.u8(s.alg.id()).raw(&s.key_id.0).bytes(&s.signature);
        }
        Ok(w.envelope(Kind::Signed))
    }

    pub fn decode(bytes: &[u8]) -> Result<Signed<T>, RecordError> {
        let mut r = crate::wire::open(bytes, Kind::Signed)?;
        let object_bytes = r
            .bytes(
                "signed object",
                T::KIND.max_body() + crate::wire::HEADER_LEN,
            )?
            .to_vec();
        let value = T::decode(&object_bytes)?;
        let at = r.offset();
        let n = usize::from(r.u8("signature count")?);
        if n == 0 || n > MAX_SIGNATURES {
            return Err(r.bad("signature count", at, "expected 1 to 8", n).into());
        }
        let mut signatures = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.offset();
            let id = r.u8("signature algorithm")?;
            let alg = SigAlg::from_id(id)
                .ok_or_else(|| r.bad("signature algorithm", at, "expected 1 to 4", id))?;
            let mut k = [0u8; 32];
            k.copy_from_slice(r.take("signer key id", 32)?);
            let signature = r.bytes("signature", MAX_SIGNATURE_LEN)?.to_vec();
            signatures.push(SignatureEntry {
                alg,
                key_id: KeyId(k),
                signature,
            });
        }
        r.finish(Kind::Signed)?;
        let out = Signed {
            object_bytes,
            value,
            signatures,
        };
        out.check_signers()?;
        Ok(out)
    }

    /// Signatures must come from exactly the keys the object names, in that order.
    fn check_signers(&self) -> Result<(), RecordError> {
        count("signatures", self.signatures.len(), MAX_SIGNATURES)?;
        let found: Vec<KeyId> = self.signatures.iter().map(|s| s.key_id).collect();
        check_signer_ids(self.value.key_ids(), &found)
    }
}

/// Checks that `signers` are exactly the keys `named`, in that order: what a signed object's
/// signatures must be. Signers call it before signing, so no signature is spent on an object
/// that could not be encoded.
pub fn check_signer_ids(named: &[KeyId], signers: &[KeyId]) -> Result<(), RecordError> {
    if signers.len() != named.len() {
        return Err(RecordError::SignerCount {
            named: named.len(),
            found: signers.len(),
        });
    }
    for (i, (s, k)) in signers.iter().zip(named).enumerate() {
        if s != k {
            return Err(RecordError::UnnamedSigner {
                index: i,
                expected: k.to_hex(),
                found: *s,
            });
        }
    }
    Ok(())
}

/// Writes a key id list (count byte, then ids); encoders check the count first.
pub(crate) fn write_key_ids(w: &mut Writer, ids: &[KeyId]) {
    w.u8(u8::try_from(ids.len()).unwrap_or(u8::MAX));
    for k in ids {
        w.raw(&k.0);
    }
}

pub(crate) fn check_key_ids(ids: &[KeyId]) -> Result<(), RecordError> {
    count("key ids", ids.len(), MAX_SIGNATURES)
}

pub(crate) fn read_key_ids(r: &mut crate::wire::Reader<'_>) -> Result<Vec<KeyId>, WireError> {
    let at = r.offset();
    let n = usize::from(r.u8("key id count")?);
    if n == 0 || n > MAX_SIGNATURES {
        return Err(r.bad("key id count", at, "expected 1 to 8", n));
    }
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let mut k = [0u8; 32];
        k.copy_from_slice(r.take("key id", 32)?);
        ids.push(KeyId(k));
    }
    Ok(ids)
}

pub(crate) fn read_time(r: &mut crate::wire::Reader<'_>) -> Result<UnixTime, WireError> {
    let secs = r.u64("time seconds")?;
    let at = r.offset();
    let nanos = r.u32("time nanoseconds")?;
    if nanos >= 1_000_000_000 {
        return Err(r.bad("time nanoseconds", at, "expected below 1000000000", nanos));
    }
    Ok(UnixTime { secs, nanos })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::HashAlg;

    fn sample() -> Vec<u8> {
        let params = TreeParams::new(HashAlg::Blake3, &[]).unwrap();
        let root = Digest::new(HashAlg::Blake3, &[3; 32]).unwrap();
        let record = MeasurementRecord {
            time: UnixTime { secs: 1, nanos: 2 },
            nonce: vec![],
            key_ids: vec![KeyId([5; 32])],
            images: vec![ImageMeasurement {
                path: "m".into(),
                params,
                len: 4096,
                root,
            }],
        };
        let mut s = SignedRecord::new(record).unwrap();
        s.signatures.push(SignatureEntry {
            alg: SigAlg::Ed25519,
            key_id: KeyId([5; 32]),
            signature: vec![1; 64],
        });
        s.encode().unwrap()
    }

    fn err(bytes: &[u8]) -> RecordError {
        SignedRecord::decode(bytes).unwrap_err()
    }

    #[test]
    fn one_test_per_corruption_kind() {
        let good = sample();
        assert!(SignedRecord::decode(&good).is_ok());

        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(
            err(&b),
            RecordError::Wire(WireError::BadMagic { .. })
        ));

        let mut b = good.clone();
        b[11] = 2;
        assert!(matches!(
            err(&b),
            RecordError::Wire(WireError::BadVersion { found: 2, .. })
        ));

        let mut b = good.clone();
        b[8..10].copy_from_slice(&Kind::PageProof.id().to_be_bytes());
        assert!(matches!(
            err(&b),
            RecordError::Wire(WireError::WrongKind { found: 3, .. })
        ));

        for cut in [0, 5, 16, good.len() / 2, good.len() - 1] {
            assert!(
                matches!(
                    err(&good[..cut]),
                    RecordError::Wire(WireError::Truncated { .. })
                ),
                "cut {cut}"
            );
        }

        let mut b = good.clone();
        b.extend_from_slice(&[0; 3]);
        assert!(matches!(
            err(&b),
            RecordError::Wire(WireError::Trailing { count: 3, .. })
        ));

        let big = vec![0u8; Kind::Signed.max_body() + 17];
        assert!(matches!(
            err(&big),
            RecordError::Wire(WireError::Oversize { .. })
        ));

        // The signature's key id no longer names the record's signer.
        let mut b = good.clone();
        let at = b.len() - 64 - 4 - 1;
        b[at] ^= 1;
        assert!(matches!(
            err(&b),
            RecordError::UnnamedSigner { index: 0, .. }
        ));
    }

    #[test]
    fn unknown_algorithm_ids_are_named() {
        let good = sample();
        // The signature algorithm byte sits before the 32-byte key id, 4-byte length and 64 bytes.
        let mut b = good.clone();
        let at = b.len() - 64 - 4 - 32 - 1;
        b[at] = 77;
        let e = err(&b);
        assert!(
            matches!(&e, RecordError::Wire(WireError::BadValue { field: "signature algorithm", found, .. }) if found == "77"),
            "{e:?}"
        );
    }
}
