//! Which keys sign each link of a chain.
//!
//! A chain starts with the keys its verifier pins. A link may announce a new signer set (a
//! rotation, signed by the old and the new keys), and the baseline may announce revokers. A
//! signed revocation bars a key from a seq on; a revokers' revocation may name the keys that
//! take its place. [`KeySchedule`] walks a chain and says which keys must sign each link; the
//! caller checks the signatures.

use core::fmt;

use crate::alg::{Digest, HashAlg};
use crate::record::{MAX_SIGNATURES, RecordError, Signable, Signed, UnixTime};
use crate::sig::{KeyId, SigAlg};
use crate::tree::read_alg;
use crate::wire::{Kind, Reader, WireError, Writer};

use super::{SeqNo, read_digest};

/// Longest raw public key a chain carries (hybrid Ed25519 + ML-DSA-65 is 1984 bytes).
pub const MAX_PUBLIC_KEY_LEN: usize = 2048;
pub const MAX_REASON_LEN: usize = 256;

/// A public key as a chain carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct ChainKey {
    pub alg: SigAlg,
    pub raw: Vec<u8>,
}

impl ChainKey {
    pub fn id(&self) -> KeyId {
        KeyId::of_public_key(self.alg, &self.raw)
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainKey({} {})", self.alg, self.id())
    }
}

/// What a link announces: the signer set from the next link on (a rotation), and, at the
/// baseline only, the keys allowed to revoke the chain's keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announce {
    pub signers: Vec<ChainKey>,
    pub revokers: Vec<ChainKey>,
}

impl Announce {
    pub fn is_empty(&self) -> bool {
        self.signers.is_empty() && self.revokers.is_empty()
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        write_keys(w, &self.signers);
        write_keys(w, &self.revokers);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Announce, WireError> {
        Ok(Announce {
            signers: read_keys(r, "announced signer count")?,
            revokers: read_keys(r, "announced revoker count")?,
        })
    }
}

fn write_keys(w: &mut Writer, keys: &[ChainKey]) {
    w.u8(u8::try_from(keys.len()).unwrap_or(u8::MAX));
    for k in keys {
        w.u8(k.alg.id()).bytes(&k.raw);
    }
}

/// 0 to [`MAX_SIGNATURES`] distinct keys.
fn read_keys(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<ChainKey>, WireError> {
    let at = r.offset();
    let n = usize::from(r.u8(field)?);
    if n > MAX_SIGNATURES {
        return Err(r.bad(field, at, "expected 0 to 8", n));
    }
    let mut keys: Vec<ChainKey> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.offset();
        let id = r.u8("key algorithm")?;
        let alg = SigAlg::from_id(id)
            .ok_or_else(|| r.bad("key algorithm", at, "a signature algorithm id (1 to 4)", id))?;
        let raw = r.bytes("public key", MAX_PUBLIC_KEY_LEN)?.to_vec();
        let key = ChainKey { alg, raw };
        if keys.iter().any(|k| k.id() == key.id()) {
            return Err(r.bad("public key", at, "distinct keys", key.id()));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// A key barred from signing a chain's links from seq `from` on (signed as a
/// [`Signed<Revocation>`]). Signed by the key itself (then naming no successors) or by the
/// revokers the chain's baseline announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The chain's seq-0 link digest.
    pub origin: Digest,
    pub key: KeyId,
    pub from: SeqNo,
    /// The keys that sign in the revoked key's place from `from` on.
    pub successors: Vec<ChainKey>,
    pub reason: String,
    pub time: UnixTime,
    pub key_ids: Vec<KeyId>,
}

pub type SignedRevocation = Signed<Revocation>;

impl Signable for Revocation {
    const KIND: Kind = Kind::Revocation;

    fn encode(&self) -> Result<Vec<u8>, RecordError> {
        super::check_key_ids(&self.key_ids)?;
        if self.successors.len() > MAX_SIGNATURES || self.reason.len() > MAX_REASON_LEN {
            return Err(RecordError::Inconsistent(format!(
                "a revocation names at most {MAX_SIGNATURES} successors and a reason of at most {MAX_REASON_LEN} bytes"
            )));
        }
        let mut w = Writer::new();
        w.u8(self.origin.alg().id())
            .raw(self.origin.as_bytes())
            .raw(&self.key.0)
            .u64(self.from.0);
        write_keys(&mut w, &self.successors);
        w.bytes(self.reason.as_bytes())
            .u64(self.time.secs)
            .u32(self.time.nanos)
            .u8(u8::try_from(self.key_ids.len()).unwrap_or(u8::MAX));
        for k in &self.key_ids {
            w.raw(&k.0);
        }
        Ok(w.envelope(Kind::Revocation))
    }

    fn decode(bytes: &[u8]) -> Result<Revocation, RecordError> {
        let mut r = crate::wire::open(bytes, Kind::Revocation)?;
        let alg: HashAlg = read_alg(&mut r)?;
        let origin = read_digest(&mut r, alg, "chain origin")?;
        let mut key = [0u8; 32];
        key.copy_from_slice(r.take("revoked key id", 32)?);
        let from = SeqNo(r.u64("from seq")?);
        let successors = read_keys(&mut r, "successor count")?;
        let reason = r.string("reason", MAX_REASON_LEN)?.to_owned();
        let time = crate::record::read_time(&mut r)?;
        let key_ids = crate::record::read_key_ids(&mut r)?;
        r.finish(Kind::Revocation)?;
        Ok(Revocation {
            origin,
            key: KeyId(key),
            from,
            successors,
            reason,
            time,
            key_ids,
        })
    }

    fn key_ids(&self) -> &[KeyId] {
        &self.key_ids
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("signed by {found}; expected signatures by the keys in force at this seq: {expected}")]
    Signers { expected: String, found: String },
    #[error("key {key} is revoked from seq {from}")]
    Revoked { key: KeyId, from: SeqNo },
    #[error("every signing key of the chain is revoked from seq {from}; start a new chain")]
    NoKeys { from: SeqNo },
    #[error("revokers announced at seq {seq}; only the baseline (seq 0) announces them")]
    LateRevokers { seq: SeqNo },
    #[error("revocation of key {key}: {problem}")]
    Revocation { key: KeyId, problem: String },
}

fn ids(keys: &[ChainKey]) -> String {
    let v: Vec<String> = keys.iter().map(|k| k.id().to_hex()).collect();
    v.join(", ")
}

/// Adds the keys of `more` that `set` lacks.
fn union(set: &mut Vec<ChainKey>, more: &[ChainKey]) {
    for k in more {
        if !set.iter().any(|s| s.id() == k.id()) {
            set.push(k.clone());
        }
    }
}

/// The keys in force as a chain is walked from its first link.
#[derive(Clone, Debug)]
pub struct KeySchedule {
    current: Vec<ChainKey>,
    revokers: Vec<ChainKey>,
    /// Accepted revocations, by `from`.
    revocations: Vec<Revocation>,
    /// How many of them the walk has applied.
    applied: usize,
    /// The seq from which revocations left no key in force.
    emptied: Option<SeqNo>,
}

impl KeySchedule {
    /// `pinned`: the keys the chain's first link is signed by. `revokers`: the ones its
    /// baseline announced (read ahead, since revocations are checked before the walk).
    pub fn new(pinned: Vec<ChainKey>, revokers: Vec<ChainKey>) -> KeySchedule {
        KeySchedule {
            current: pinned,
            revokers,
            revocations: Vec::new(),
            applied: 0,
            emptied: None,
        }
    }

    /// The signer set in force for the next link.
    pub fn current(&self) -> &[ChainKey] {
        &self.current
    }

    /// Which keys must have signed `rev` for this chain to honour it: the revoked key alone
    /// (`known` holds the keys the chain names, for its public key), or revokers only.
    pub fn revocation_signers(
        &self,
        rev: &Revocation,
        origin: &Digest,
        known: &[ChainKey],
    ) -> Result<Vec<ChainKey>, KeyError> {
        let bad = |problem: String| KeyError::Revocation {
            key: rev.key,
            problem,
        };
        if rev.origin != *origin {
            return Err(bad(format!(
                "it is for the chain with origin {}, this chain's is {origin}",
                rev.origin
            )));
        }
        if rev.key_ids == [rev.key] {
            if !rev.successors.is_empty() {
                return Err(bad(
                    "signed by the revoked key itself, it may not name successors".into(),
                ));
            }
            let key = known
                .iter()
                .find(|k| k.id() == rev.key)
                .ok_or_else(|| bad("signed by a key this chain never named as a signer".into()))?;
            return Ok(vec![key.clone()]);
        }
        rev.key_ids
            .iter()
            .map(|id| {
                self.revokers
                    .iter()
                    .find(|k| k.id() == *id)
                    .cloned()
                    .ok_or_else(|| {
                        bad(format!(
                            "signed by {id}, neither the revoked key alone nor a revoker the baseline announced"
                        ))
                    })
            })
            .collect()
    }

    /// Honours `rev`, whose signatures the caller checked against
    /// [`KeySchedule::revocation_signers`].
    pub fn add_revocation(&mut self, rev: Revocation) {
        let at = self.revocations[self.applied..].partition_point(|r| r.from <= rev.from);
        self.revocations.insert(self.applied + at, rev);
    }

    /// The earliest revocation of `key` in force at `seq`.
    pub fn revoked(&self, key: &KeyId, seq: SeqNo) -> Option<&Revocation> {
        self.revocations
            .iter()
            .find(|r| r.key == *key && r.from <= seq)
    }

    /// The keys that must all sign `link` (of seq `seq`, announcing `announce`, naming
    /// `signers`), and the schedule moved past it.
    pub fn expect(
        &mut self,
        seq: SeqNo,
        announce: &Announce,
        signers: &[KeyId],
    ) -> Result<Vec<ChainKey>, KeyError> {
        while let Some(r) = self.revocations.get(self.applied).filter(|r| r.from <= seq) {
            let r = r.clone();
            self.applied += 1;
            if let Some(i) = self.current.iter().position(|k| k.id() == r.key) {
                self.current.remove(i);
                union(&mut self.current, &r.successors);
                if self.current.is_empty() {
                    self.emptied = Some(r.from);
                }
            }
        }
        if !announce.revokers.is_empty() {
            if seq != SeqNo(0) {
                return Err(KeyError::LateRevokers { seq });
            }
            self.revokers = announce.revokers.clone();
        }
        if let Some(r) = signers.iter().find_map(|k| self.revoked(k, seq)) {
            return Err(KeyError::Revoked {
                key: r.key,
                from: r.from,
            });
        }
        if self.current.is_empty() {
            // Nobody is left to sign, not even a rotation.
            return Err(KeyError::NoKeys {
                from: self.emptied.unwrap_or(seq),
            });
        }
        let mut expected = self.current.clone();
        union(&mut expected, &announce.signers);
        if let Some(r) = expected.iter().find_map(|k| self.revoked(&k.id(), seq)) {
            return Err(KeyError::Revoked {
                key: r.key,
                from: r.from,
            });
        }
        let mut want: Vec<KeyId> = expected.iter().map(ChainKey::id).collect();
        let mut found = signers.to_vec();
        want.sort();
        found.sort();
        if want != found {
            let found: Vec<String> = signers.iter().map(KeyId::to_hex).collect();
            return Err(KeyError::Signers {
                expected: ids(&expected),
                found: found.join(", "),
            });
        }
        if !announce.signers.is_empty() {
            self.current = announce.signers.clone();
        }
        Ok(expected)
    }
}
