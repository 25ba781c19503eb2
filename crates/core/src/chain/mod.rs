//! The snapshot chain model: component roots, state roots, deltas and signed links.
//!
//! A VM state at sequence number `seq` is a list of named components (memory images, disks,
//! device state, configuration), each measured as an image tree, plus metadata. The state root
//! commits to all of it. A link commits to the previous link, the delta (which pages changed,
//! and their new digests), the state root and the manifest that says where the pages are stored.
//! Seq 0 (the baseline) is a delta from all-zero images of the same sizes.

pub mod keys;
mod manifest;

#[cfg(test)]
mod keys_tests;
#[cfg(test)]
mod tests;

use core::fmt;

pub use keys::{Announce, ChainKey, KeyError, KeySchedule, Revocation, SignedRevocation};
pub use manifest::{BatchRef, DeltaEntry, MAX_BATCH_PAGES, Manifest, PageChange, delta_digest};

use crate::alg::{Digest, HashAlg};
use crate::record::{RecordError, Signable, Signed, UnixTime};
use crate::sig::KeyId;
use crate::tree::{MAX_SALT_LEN, TreeParams, read_alg};
use crate::wire::{HEADER_LEN, Kind, Reader, WireError, Writer, open_versioned};

pub const MAX_COMPONENTS: usize = 64;
pub const MAX_NAME_LEN: usize = 255;

/// The name rule shared by components, VMs and disks (names become file names): 1 to `max`
/// characters of `[A-Za-z0-9._-]`, not starting with '.'.
pub fn is_valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Position of a link in its chain; the baseline is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqNo(pub u64);

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Content address of a stored object: BLAKE3 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    pub fn of(bytes: &[u8]) -> ObjectId {
        ObjectId(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

/// What a component holds; stable ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    Memory,
    Disk,
    DeviceState,
    Config,
}

impl ComponentKind {
    pub const ALL: [ComponentKind; 4] = [
        ComponentKind::Memory,
        ComponentKind::Disk,
        ComponentKind::DeviceState,
        ComponentKind::Config,
    ];

    pub fn id(self) -> u8 {
        match self {
            ComponentKind::Memory => 1,
            ComponentKind::Disk => 2,
            ComponentKind::DeviceState => 3,
            ComponentKind::Config => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::Memory => "memory",
            ComponentKind::Disk => "disk",
            ComponentKind::DeviceState => "device-state",
            ComponentKind::Config => "config",
        }
    }

    fn from_id(id: u8) -> Option<ComponentKind> {
        ComponentKind::ALL.into_iter().find(|k| k.id() == id)
    }
}

/// One component's measured root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentRoot {
    pub name: String,
    pub kind: ComponentKind,
    pub len: u64,
    pub root: Digest,
}

/// Metadata every state commits to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateMeta {
    pub vm_id: String,
    pub seq: SeqNo,
    pub time: UnixTime,
    pub params: TreeParams,
    pub policy_id: String,
    pub version: String,
}

impl StateMeta {
    fn write(&self, w: &mut Writer) {
        w.bytes(self.vm_id.as_bytes())
            .u64(self.seq.0)
            .u64(self.time.secs)
            .u32(self.time.nanos)
            .u8(self.params.alg().id())
            .bytes(self.params.salt())
            .bytes(self.policy_id.as_bytes())
            .bytes(self.version.as_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<StateMeta, WireError> {
        let vm_id = r.string("vm id", MAX_NAME_LEN)?.to_owned();
        let seq = SeqNo(r.u64("seq")?);
        let secs = r.u64("time seconds")?;
        let nanos = r.u32("time nanoseconds")?;
        let alg = read_alg(r)?;
        let at = r.offset();
        let salt = r.bytes("salt", MAX_SALT_LEN)?;
        let params = TreeParams::new(alg, salt)
            .map_err(|e| r.bad("salt", at, "a salt the algorithm takes", e))?;
        let policy_id = r.string("policy id", MAX_NAME_LEN)?.to_owned();
        let version = r.string("vmattest version", MAX_NAME_LEN)?.to_owned();
        Ok(StateMeta {
            vm_id,
            seq,
            time: UnixTime { secs, nanos },
            params,
            policy_id,
            version,
        })
    }
}

fn write_components(w: &mut Writer, comps: &[ComponentRoot]) {
    w.u32(u32::try_from(comps.len()).unwrap_or(u32::MAX));
    for c in comps {
        w.bytes(c.name.as_bytes())
            .u8(c.kind.id())
            .u64(c.len)
            .raw(c.root.as_bytes());
    }
}

fn read_components(r: &mut Reader<'_>, alg: HashAlg) -> Result<Vec<ComponentRoot>, WireError> {
    let n = r.len32("component count", MAX_COMPONENTS)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string("component name", MAX_NAME_LEN)?.to_owned();
        let at = r.offset();
        let id = r.u8("component kind")?;
        let kind = ComponentKind::from_id(id)
            .ok_or_else(|| r.bad("component kind", at, "expected 1 to 4", id))?;
        let len = r.u64("component length")?;
        let root = read_digest(r, alg, "component root")?;
        out.push(ComponentRoot {
            name,
            kind,
            len,
            root,
        });
    }
    Ok(out)
}

pub(crate) fn read_digest(
    r: &mut Reader<'_>,
    alg: HashAlg,
    field: &'static str,
) -> Result<Digest, WireError> {
    let at = r.offset();
    let bytes = r.take(field, alg.digest_len())?;
    Digest::new(alg, bytes).ok_or_else(|| r.bad(field, at, "a digest", "short"))
}

/// Domain tag of state roots.
pub const STATE_DOMAIN: &[u8] = b"vmattest state v1\0";
/// Domain tag of link digests.
pub const LINK_DOMAIN: &[u8] = b"vmattest link v1\0";

/// The state root: a hash over the metadata and every component root, canonically encoded.
pub fn state_root(meta: &StateMeta, comps: &[ComponentRoot]) -> Digest {
    let mut w = Writer::new();
    meta.write(&mut w);
    write_components(&mut w, comps);
    meta.params.alg().hash(&[STATE_DOMAIN, &w.finish()])
}

/// One link of the chain (signed as a [`Signed<Link>`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub seq: SeqNo,
    /// Digest of the previous link; all zeros for the baseline.
    pub prev: Digest,
    pub delta: Digest,
    pub state_root: Digest,
    pub manifest: ObjectId,
    pub time: UnixTime,
    /// The signers, all of whom signed: the keys in force, and those a rotation announces.
    pub key_ids: Vec<KeyId>,
    pub announce: Announce,
}

pub type SignedLink = Signed<Link>;

impl Link {
    pub fn alg(&self) -> HashAlg {
        self.state_root.alg()
    }
}

/// A link or rebase names 1 to [`crate::record::MAX_SIGNATURES`] signers.
pub(crate) fn check_key_ids(ids: &[KeyId]) -> Result<(), RecordError> {
    if ids.is_empty() || ids.len() > crate::record::MAX_SIGNATURES {
        return Err(RecordError::Count {
            what: "key ids",
            max: crate::record::MAX_SIGNATURES,
            found: ids.len(),
        });
    }
    Ok(())
}

/// Digest of a signed link's object bytes, which the next link names as `prev`.
pub fn link_digest(link: &SignedLink) -> Digest {
    link.value().alg().hash(&[LINK_DOMAIN, link.object_bytes()])
}

impl Signable for Link {
    const KIND: Kind = Kind::Link;

    fn encode(&self) -> Result<Vec<u8>, RecordError> {
        check_key_ids(&self.key_ids)?;
        let mut w = Writer::new();
        w.u8(self.alg().id())
            .u64(self.seq.0)
            .raw(self.prev.as_bytes())
            .raw(self.delta.as_bytes())
            .raw(self.state_root.as_bytes())
            .raw(&self.manifest.0)
            .u64(self.time.secs)
            .u32(self.time.nanos)
            .u8(u8::try_from(self.key_ids.len()).unwrap_or(u8::MAX));
        for k in &self.key_ids {
            w.raw(&k.0);
        }
        self.announce.write(&mut w);
        Ok(w.envelope(Kind::Link))
    }

    fn decode(bytes: &[u8]) -> Result<Link, RecordError> {
        let (mut r, version) = open_versioned(bytes, Kind::Link)?;
        let alg = read_alg(&mut r)?;
        let seq = SeqNo(r.u64("seq")?);
        let prev = read_digest(&mut r, alg, "previous link digest")?;
        let delta = read_digest(&mut r, alg, "delta digest")?;
        let state_root = read_digest(&mut r, alg, "state root")?;
        let mut m = [0u8; 32];
        m.copy_from_slice(r.take("manifest id", 32)?);
        let secs = r.u64("time seconds")?;
        let nanos = r.u32("time nanoseconds")?;
        let key_ids = crate::record::read_key_ids(&mut r)?;
        let announce = if version >= 3 {
            Announce::read(&mut r)?
        } else {
            Announce::default()
        };
        r.finish(Kind::Link)?;
        Ok(Link {
            seq,
            prev,
            delta,
            state_root,
            manifest: ObjectId(m),
            time: UnixTime { secs, nanos },
            key_ids,
            announce,
        })
    }

    fn key_ids(&self) -> &[KeyId] {
        &self.key_ids
    }
}

/// Largest signed link a rebase embeds.
pub const MAX_EMBEDDED_LINK: usize = 96 * 1024;
/// Most announcing links a rebase carries from the seqs it folds.
pub const MAX_KEY_LINKS: usize = 32;

/// A fold of seqs `0..seq` of a chain (signed as a [`Signed<Rebase>`]): the chain now starts
/// at `seq`, whose state a full manifest (a delta from all-zero images) holds. The original
/// link at `seq` is kept verbatim, so its own signature still vouches for the state root and
/// the next link's `prev` still names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebase {
    /// The chain's seq-0 link digest, carried from fold to fold: the chain's identity.
    pub origin: Digest,
    /// The seq-0 state root: the salt of an encrypted store's keys.
    pub origin_root: Digest,
    /// The original signed link at the new first seq.
    pub link: SignedLink,
    /// The full manifest of that seq's state.
    pub manifest: ObjectId,
    /// Its delta digest (from all-zero images).
    pub delta: Digest,
    /// The folded links that announce keys, in seq order: the verifier's path from the keys
    /// it pins to the keys in force at `seq`.
    pub key_links: Vec<SignedLink>,
    /// When the fold was made.
    pub time: UnixTime,
    pub key_ids: Vec<KeyId>,
}

pub type SignedRebase = Signed<Rebase>;

impl Rebase {
    pub fn seq(&self) -> SeqNo {
        self.link.value().seq
    }

    pub fn alg(&self) -> HashAlg {
        self.delta.alg()
    }
}

impl Signable for Rebase {
    const KIND: Kind = Kind::Rebase;

    fn encode(&self) -> Result<Vec<u8>, RecordError> {
        check_key_ids(&self.key_ids)?;
        let alg = self.alg();
        if [
            self.origin.alg(),
            self.origin_root.alg(),
            self.link.value().alg(),
        ]
        .iter()
        .any(|a| *a != alg)
        {
            return Err(RecordError::Inconsistent(format!(
                "rebase digests mix tree algorithms; expected {alg} throughout"
            )));
        }
        let embed = |l: &SignedLink| -> Result<Vec<u8>, RecordError> {
            let bytes = l.encode()?;
            if bytes.len() > MAX_EMBEDDED_LINK {
                return Err(RecordError::Count {
                    what: "bytes of embedded link",
                    max: MAX_EMBEDDED_LINK,
                    found: bytes.len(),
                });
            }
            Ok(bytes)
        };
        let link = embed(&self.link)?;
        if self.key_links.len() > MAX_KEY_LINKS {
            return Err(RecordError::Count {
                what: "key links",
                max: MAX_KEY_LINKS,
                found: self.key_links.len(),
            });
        }
        let mut w = Writer::new();
        w.u8(alg.id())
            .u64(self.seq().0)
            .raw(self.origin.as_bytes())
            .raw(self.origin_root.as_bytes())
            .bytes(&link)
            .raw(&self.manifest.0)
            .raw(self.delta.as_bytes())
            .u8(u8::try_from(self.key_links.len()).unwrap_or(u8::MAX));
        for l in &self.key_links {
            w.bytes(&embed(l)?);
        }
        w.u64(self.time.secs)
            .u32(self.time.nanos)
            .u8(u8::try_from(self.key_ids.len()).unwrap_or(u8::MAX));
        for k in &self.key_ids {
            w.raw(&k.0);
        }
        Ok(w.envelope(Kind::Rebase))
    }

    fn decode(bytes: &[u8]) -> Result<Rebase, RecordError> {
        let (mut r, version) = open_versioned(bytes, Kind::Rebase)?;
        let alg = read_alg(&mut r)?;
        let seq = r.u64("seq")?;
        let origin = read_digest(&mut r, alg, "origin link digest")?;
        let origin_root = read_digest(&mut r, alg, "origin state root")?;
        let at = r.offset();
        let link = SignedLink::decode(r.bytes("embedded link", MAX_EMBEDDED_LINK)?)?;
        if link.value().seq.0 != seq || link.value().alg() != alg {
            return Err(r
                .bad(
                    "embedded link",
                    at,
                    "the link of the rebase's seq and tree algorithm",
                    format!(
                        "seq {} with {} in a rebase of seq {seq} with {alg}",
                        link.value().seq,
                        link.value().alg()
                    ),
                )
                .into());
        }
        if seq == 0 {
            return Err(r.bad("seq", HEADER_LEN + 1, "a seq above 0", 0).into());
        }
        let mut m = [0u8; 32];
        m.copy_from_slice(r.take("manifest id", 32)?);
        let delta = read_digest(&mut r, alg, "delta digest")?;
        let key_links = if version >= 2 {
            read_key_links(&mut r, SeqNo(seq), alg)?
        } else {
            Vec::new()
        };
        let secs = r.u64("time seconds")?;
        let nanos = r.u32("time nanoseconds")?;
        let key_ids = crate::record::read_key_ids(&mut r)?;
        r.finish(Kind::Rebase)?;
        Ok(Rebase {
            origin,
            origin_root,
            link,
            manifest: ObjectId(m),
            delta,
            key_links,
            time: UnixTime { secs, nanos },
            key_ids,
        })
    }

    fn key_ids(&self) -> &[KeyId] {
        &self.key_ids
    }
}

/// A rebase's key links: announcing links of seqs below `seq`, in increasing seq order.
fn read_key_links(
    r: &mut Reader<'_>,
    seq: SeqNo,
    alg: HashAlg,
) -> Result<Vec<SignedLink>, RecordError> {
    let at = r.offset();
    let n = usize::from(r.u8("key link count")?);
    if n > MAX_KEY_LINKS {
        return Err(r.bad("key link count", at, "expected 0 to 32", n).into());
    }
    let mut links: Vec<SignedLink> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.offset();
        let link = SignedLink::decode(r.bytes("key link", MAX_EMBEDDED_LINK)?)?;
        let l = link.value();
        let after = links.last().map(|p| p.value().seq);
        if l.seq >= seq
            || after.is_some_and(|a| l.seq <= a)
            || l.announce.is_empty()
            || l.alg() != alg
        {
            return Err(r
                .bad(
                    "key link",
                    at,
                    "an announcing link of a folded seq, in order, with the rebase's tree algorithm",
                    format!("seq {} with {}", l.seq, l.alg()),
                )
                .into());
        }
        links.push(link);
    }
    Ok(links)
}
