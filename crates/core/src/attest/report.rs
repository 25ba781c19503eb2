//! Snapshot attestation: does a running VM still hold the state an attested snapshot covers?

use crate::alg::{Digest, HashAlg};
use crate::chain::{MAX_COMPONENTS, MAX_NAME_LEN, SeqNo, read_digest};
use crate::record::{
    RecordError, Signable, Signed, UnixTime, check_key_ids, read_key_ids, read_time, write_key_ids,
};
use crate::sig::KeyId;
use crate::tree::read_alg;
use crate::wire::{Kind, Writer};

use super::evidence::MAX_NONCE_LEN;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentCheck {
    pub name: String,
    pub expected: Digest,
    pub found: Digest,
}

impl ComponentCheck {
    pub fn matches(&self) -> bool {
        self.expected.ct_eq(&self.found)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotReport {
    pub vm: String,
    pub time: UnixTime,
    /// The requester's nonce: a server accepts only the nonce of its pending request; a
    /// report kept offline may carry none.
    pub nonce: Vec<u8>,
    pub seq: SeqNo,
    /// Digest of the signed link the snapshot ends at.
    pub link: Digest,
    pub components: Vec<ComponentCheck>,
    pub key_ids: Vec<KeyId>,
}

pub type SignedSnapshotReport = Signed<SnapshotReport>;

impl SnapshotReport {
    /// Match only if every component's root is as the snapshot recorded it.
    pub fn matches(&self) -> bool {
        !self.components.is_empty() && self.components.iter().all(ComponentCheck::matches)
    }

    pub fn verdict(&self) -> &'static str {
        if self.matches() { "match" } else { "mismatch" }
    }

    fn alg(&self) -> HashAlg {
        self.link.alg()
    }
}

impl Signable for SnapshotReport {
    const KIND: Kind = Kind::SnapshotReport;

    fn encode(&self) -> Result<Vec<u8>, RecordError> {
        check_key_ids(&self.key_ids)?;
        if self.components.is_empty() || self.components.len() > MAX_COMPONENTS {
            return Err(RecordError::Count {
                what: "components",
                max: MAX_COMPONENTS,
                found: self.components.len(),
            });
        }
        let mut w = Writer::new();
        w.bytes(self.vm.as_bytes())
            .u64(self.time.secs)
            .u32(self.time.nanos)
            .bytes(&self.nonce)
            .u64(self.seq.0)
            .u8(self.alg().id())
            .raw(self.link.as_bytes())
            .u8(u8::from(self.matches()))
            .u32(u32::try_from(self.components.len()).unwrap_or(u32::MAX));
        for c in &self.components {
            w.bytes(c.name.as_bytes())
                .raw(c.expected.as_bytes())
                .raw(c.found.as_bytes());
        }
        write_key_ids(&mut w, &self.key_ids);
        Ok(w.envelope(Kind::SnapshotReport))
    }

    fn decode(bytes: &[u8]) -> Result<SnapshotReport, RecordError> {
        let mut r = crate::wire::open(bytes, Kind::SnapshotReport)?;
        let vm = r.string("vm", MAX_NAME_LEN)?.to_owned();
        let time = read_time(&mut r)?;
        let nonce = r.bytes("nonce", MAX_NONCE_LEN)?.to_vec();
        let seq = SeqNo(r.u64("seq")?);
        let alg = read_alg(&mut r)?;
        let link = read_digest(&mut r, alg, "link digest")?;
        let at = r.offset();
        let verdict = r.u8("verdict")?;
        let n = r.len32("component count", MAX_COMPONENTS)?;
        let mut components = Vec::with_capacity(n);
        for _ in 0..n {
            components.push(ComponentCheck {
                name: r.string("component name", MAX_NAME_LEN)?.to_owned(),
                expected: read_digest(&mut r, alg, "expected root")?,
                found: read_digest(&mut r, alg, "found root")?,
            });
        }
        // The verdict byte is redundant so that a reader of the raw object sees it; it must agree.
        let all_match = !components.is_empty() && components.iter().all(ComponentCheck::matches);
        if verdict != u8::from(all_match) {
            return Err(r
                .bad(
                    "verdict",
                    at,
                    "the verdict the component roots give",
                    verdict,
                )
                .into());
        }
        let key_ids = read_key_ids(&mut r)?;
        r.finish(Kind::SnapshotReport)?;
        Ok(SnapshotReport {
            vm,
            time,
            nonce,
            seq,
            link,
            components,
            key_ids,
        })
    }

    fn key_ids(&self) -> &[KeyId] {
        &self.key_ids
    }
}
