//! Runtime evidence: what an agent measured of a running VM, for a server challenge.

use crate::alg::{Digest, HashAlg};
use crate::chain::MAX_NAME_LEN;
use crate::record::{
    RecordError, Signable, Signed, UnixTime, check_key_ids, read_key_ids, read_time, write_key_ids,
};
use crate::sig::KeyId;
use crate::tree::read_alg;
use crate::wire::{Kind, Reader, WireError, Writer};

use super::policy::MAX_REGIONS;

pub const MIN_NONCE_LEN: usize = 16;
pub const MAX_NONCE_LEN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionDigest {
    pub name: String,
    /// Pages the digest covers (all of the region, or the nonce's sample).
    pub pages: u64,
    pub digest: Digest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub vm: String,
    pub time: UnixTime,
    pub nonce: Vec<u8>,
    pub alg: HashAlg,
    /// SHA-256 of the resolved policy's canonical encoding.
    pub policy_id: Digest,
    pub subset: String,
    pub regions: Vec<RegionDigest>,
    /// Digest of every page of the policy's kernel-code region, if it has one.
    pub kernel_code: Option<Digest>,
    pub agent_version: String,
    pub key_ids: Vec<KeyId>,
}

pub type SignedEvidence = Signed<Evidence>;

fn read_optional_digest(r: &mut Reader<'_>, alg: HashAlg) -> Result<Option<Digest>, WireError> {
    let at = r.offset();
    match r.u8("kernel code flag")? {
        0 => Ok(None),
        1 => Ok(Some(crate::chain::read_digest(
            r,
            alg,
            "kernel code digest",
        )?)),
        v => Err(r.bad("kernel code flag", at, "expected 0 or 1", v)),
    }
}

impl Signable for Evidence {
    const KIND: Kind = Kind::Evidence;

    fn encode(&self) -> Result<Vec<u8>, RecordError> {
        check_key_ids(&self.key_ids)?;
        if self.regions.is_empty() || self.regions.len() > MAX_REGIONS {
            return Err(RecordError::Count {
                what: "regions",
                max: MAX_REGIONS,
                found: self.regions.len(),
            });
        }
        if !(MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&self.nonce.len()) {
            return Err(RecordError::Count {
                what: "nonce bytes",
                max: MAX_NONCE_LEN,
                found: self.nonce.len(),
            });
        }
        let mut w = Writer::new();
        w.bytes(self.vm.as_bytes())
            .u64(self.time.secs)
            .u32(self.time.nanos)
            .bytes(&self.nonce)
            .u8(self.alg.id())
            .raw(self.policy_id.as_bytes())
            .bytes(self.subset.as_bytes())
            .u32(u32::try_from(self.regions.len()).unwrap_or(u32::MAX));
        for r in &self.regions {
            w.bytes(r.name.as_bytes())
                .u64(r.pages)
                .raw(r.digest.as_bytes());
        }
        match &self.kernel_code {
            Some(d) => w.u8(1).raw(d.as_bytes()),
            None => w.u8(0),
        };
        w.bytes(self.agent_version.as_bytes());
        write_key_ids(&mut w, &self.key_ids);
        Ok(w.envelope(Kind::Evidence))
    }

    fn decode(bytes: &[u8]) -> Result<Evidence, RecordError> {
        let mut r = crate::wire::open(bytes, Kind::Evidence)?;
        let vm = r.string("vm", MAX_NAME_LEN)?.to_owned();
        let time = read_time(&mut r)?;
        let at = r.offset();
        let nonce = r.bytes("nonce", MAX_NONCE_LEN)?.to_vec();
        if nonce.len() < MIN_NONCE_LEN {
            return Err(r
                .bad("nonce", at, "expected 16 to 64 bytes", nonce.len())
                .into());
        }
        let alg = read_alg(&mut r)?;
        let policy_id = crate::chain::read_digest(&mut r, HashAlg::Sha256, "policy id")?;
        let subset = r.string("subset", MAX_NAME_LEN)?.to_owned();
        let n = r.len32("region count", MAX_REGIONS)?;
        let mut regions = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.string("region name", MAX_NAME_LEN)?.to_owned();
            let pages = r.u64("region pages")?;
            let digest = crate::chain::read_digest(&mut r, alg, "region digest")?;
            regions.push(RegionDigest {
                name,
                pages,
                digest,
            });
        }
        let kernel_code = read_optional_digest(&mut r, alg)?;
        let agent_version = r.string("agent version", MAX_NAME_LEN)?.to_owned();
        let key_ids = read_key_ids(&mut r)?;
        r.finish(Kind::Evidence)?;
        Ok(Evidence {
            vm,
            time,
            nonce,
            alg,
            policy_id,
            subset,
            regions,
            kernel_code,
            agent_version,
            key_ids,
        })
    }

    fn key_ids(&self) -> &[KeyId] {
        &self.key_ids
    }
}
