//! Runtime evidence: what an agent measured of a running VM, for a server challenge.

use crate::alg::{Digest, HashAlg};
use crate::chain::MAX_NAME_LEN;
use crate::record::{
    RecordError, Signable, Signed, UnixTime, check_key_ids, read_key_ids, read_time, write_key_ids,
};
use crate::sig::KeyId;
use crate::tree::read_alg;
use crate::wire::{Kind, Reader, WireError, Writer};

use super::patch::{MAX_SITE_LEN, SiteReport, SiteState};
use super::policy::MAX_REGIONS;

pub const MIN_NONCE_LEN: usize = 16;
pub const MAX_NONCE_LEN: usize = 64;
/// Sites all reports of one evidence may cover together (the jump table's limit).
pub const MAX_REPORT_SITES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionDigest {
    pub name: String,
    /// Pages the digest covers (all of the region, or the nonce's sample).
    pub pages: u64,
    /// With patch sites: the digest of the pages with every site's bytes zeroed.
    pub digest: Digest,
    /// The patch sites of the covered pages, when the policy has patch-site tables.
    pub sites: Option<SiteEvidence>,
}

/// A region's patch-site report as evidence carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteEvidence {
    Whole(SiteReport),
    /// The [`SiteReport::fingerprint`] of a whole report that the server's challenge said it
    /// holds for the VM: a kernel seldom patches, so most rounds repeat the last report.
    Same(Digest),
}

impl SiteEvidence {
    pub fn whole(&self) -> Option<&SiteReport> {
        match self {
            SiteEvidence::Whole(r) => Some(r),
            SiteEvidence::Same(_) => None,
        }
    }
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
    /// The patch sites of the whole kernel-code region.
    pub kernel_code_sites: Option<SiteEvidence>,
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

/// A state as a nibble of the packed form: its id, and 15 for other.
fn nibble(st: SiteState) -> u8 {
    if st == SiteState::Other { 15 } else { st.id() }
}

/// `u8 form` (0 none; from evidence v4, 3 and a BLAKE3 fingerprint names a report instead),
/// then `u32 count` and the states: form 1 lists the exceptions to NOP as
/// `u32 exceptions, (u32 index, u8 state)*`; form 2 packs every state into 4 bits (two per
/// byte, low first). The bytes of each site in state other follow its state (form 1) or the
/// packed states (form 2). Then `digest, u32 groups, (u8 flag [, i32 target])*`. The writer
/// takes the smaller form: exceptions for a few jumping labels, packed for static calls.
/// The form of `count` states of which `exceptions` are not NOP: exceptions (5 bytes each) when
/// that is no larger than packing every state in 4 bits, else packed. The one encoding of a
/// report: a reader refuses the other form (from version 3, which has both).
fn smaller_form(count: usize, exceptions: usize) -> u8 {
    if exceptions.saturating_mul(5).saturating_add(4) <= count.div_ceil(2) {
        1
    } else {
        2
    }
}

fn write_sites(w: &mut Writer, sites: Option<&SiteReport>) {
    let Some(r) = sites else {
        w.u8(0);
        return;
    };
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let exceptions = r.states.iter().filter(|s| **s != SiteState::Nop).count();
    let mut others = r.others.iter();
    let mut other = |w: &mut Writer| {
        w.bytes(others.next().map(Vec::as_slice).unwrap_or(&[]));
    };
    if smaller_form(r.states.len(), exceptions) == 1 {
        w.u8(1).u32(count(r.states.len())).u32(count(exceptions));
        for (i, st) in r.states.iter().enumerate() {
            if *st == SiteState::Nop {
                continue;
            }
            w.u32(count(i)).u8(st.id());
            if *st == SiteState::Other {
                other(w);
            }
        }
    } else {
        w.u8(2).u32(count(r.states.len()));
        for pair in r.states.chunks(2) {
            let hi = pair.get(1).map_or(0, |s| nibble(*s));
            w.u8(nibble(pair[0]) | hi << 4);
        }
        for _ in r.states.iter().filter(|s| **s == SiteState::Other) {
            other(w);
        }
    }
    w.raw(r.digest.as_bytes());
    w.u32(count(r.targets.len()));
    for t in &r.targets {
        match t {
            Some(t) => w.u8(1).u32(u32::from_ne_bytes(t.to_ne_bytes())),
            None => w.u8(0),
        };
    }
}

fn read_other(r: &mut Reader<'_>) -> Result<Vec<u8>, WireError> {
    let at = r.offset();
    let b = r.bytes("patch site bytes", MAX_SITE_LEN)?;
    if b.is_empty() {
        return Err(r.bad("patch site bytes", at, "expected 1 to 5 bytes", 0));
    }
    Ok(b.to_vec())
}

/// Form 1: the exceptions to NOP, each with its bytes if other.
fn read_exceptions(
    r: &mut Reader<'_>,
    count: usize,
) -> Result<(Vec<SiteState>, Vec<Vec<u8>>), WireError> {
    let exceptions = r.len32("patch site exceptions", count)?;
    let mut states = vec![SiteState::Nop; count];
    let mut others = Vec::new();
    let mut next = 0usize;
    for _ in 0..exceptions {
        let at = r.offset();
        let i = r.u32("patch site index")? as usize;
        if i < next || i >= count {
            return Err(r.bad(
                "patch site index",
                at,
                "expected indices increasing and below the count",
                i,
            ));
        }
        next = i + 1;
        let at = r.offset();
        let id = r.u8("patch site state")?;
        let st = SiteState::from_id(id)
            .filter(|s| *s != SiteState::Nop)
            .ok_or_else(|| r.bad("patch site state", at, "expected 1 to 9 or 255", id))?;
        if st == SiteState::Other {
            others.push(read_other(r)?);
        }
        states[i] = st;
    }
    Ok((states, others))
}

/// Form 2: every state in 4 bits, then the bytes of the others.
fn read_packed(
    r: &mut Reader<'_>,
    count: usize,
) -> Result<(Vec<SiteState>, Vec<Vec<u8>>), WireError> {
    let at = r.offset();
    let packed = r.take("patch site states", count.div_ceil(2))?;
    let nibble: [Option<SiteState>; 16] = std::array::from_fn(|n| match n {
        15 => Some(SiteState::Other),
        n => u8::try_from(n).ok().and_then(SiteState::from_id),
    });
    let mut states = Vec::with_capacity(count);
    for (i, byte) in packed.iter().enumerate() {
        for n in [byte & 15, byte >> 4] {
            if states.len() == count {
                if n != 0 {
                    return Err(r.bad("patch site states", at + i, "a zero pad nibble", n));
                }
            } else {
                states.push(nibble[usize::from(n)].ok_or_else(|| {
                    r.bad("patch site state", at + i, "expected 0 to 9 or 15", n)
                })?);
            }
        }
    }
    let mut others = Vec::new();
    for _ in states.iter().filter(|s| **s == SiteState::Other) {
        others.push(read_other(r)?);
    }
    Ok((states, others))
}

fn write_site_evidence(w: &mut Writer, sites: Option<&SiteEvidence>) {
    match sites {
        Some(SiteEvidence::Same(print)) => {
            w.u8(3).raw(print.as_bytes());
        }
        Some(SiteEvidence::Whole(report)) => write_sites(w, Some(report)),
        None => write_sites(w, None),
    }
}

fn read_site_evidence(
    r: &mut Reader<'_>,
    alg: HashAlg,
    budget: &mut usize,
    version: u16,
) -> Result<Option<SiteEvidence>, WireError> {
    if version >= 4 && r.peek_u8() == Some(3) {
        r.u8("patch sites flag")?;
        let print = crate::chain::read_digest(r, HashAlg::Blake3, "site report fingerprint")?;
        return Ok(Some(SiteEvidence::Same(print)));
    }
    Ok(read_sites(r, alg, budget, version)?.map(SiteEvidence::Whole))
}

/// `budget`: sites the evidence may still report, so that a small body cannot make large ones.
fn read_sites(
    r: &mut Reader<'_>,
    alg: HashAlg,
    budget: &mut usize,
    version: u16,
) -> Result<Option<SiteReport>, WireError> {
    let at = r.offset();
    let form = r.u8("patch sites flag")?;
    match form {
        0 => return Ok(None),
        1 => {}
        2 if version >= 3 => {}
        v if version >= 4 => return Err(r.bad("patch sites flag", at, "expected 0 to 3", v)),
        v => return Err(r.bad("patch sites flag", at, "expected 0, 1 or 2", v)),
    }
    let at = r.offset();
    let count = r.u32("patch site count")? as usize;
    if count > *budget {
        return Err(r.bad(
            "patch site count",
            at,
            "expected at most 2^20 sites in the evidence",
            count,
        ));
    }
    let (states, others) = if form == 1 {
        read_exceptions(r, count)?
    } else {
        read_packed(r, count)?
    };
    let exceptions = states.iter().filter(|s| **s != SiteState::Nop).count();
    if version >= 3 && form != smaller_form(count, exceptions) {
        return Err(r.bad(
            "patch sites flag",
            at - 1,
            "the smaller form for the number of sites that are not NOPs (one encoding)",
            form,
        ));
    }
    let digest = crate::chain::read_digest(r, alg, "patch sites digest")?;
    let mut targets = Vec::new();
    if version >= 3 {
        // A group has at least one site.
        let n = r.len32("static-call groups", count)?;
        targets.reserve(n);
        for _ in 0..n {
            let at = r.offset();
            targets.push(match r.u8("static-call target flag")? {
                0 => None,
                1 => Some(i32::from_ne_bytes(
                    r.u32("static-call target")?.to_ne_bytes(),
                )),
                v => return Err(r.bad("static-call target flag", at, "expected 0 or 1", v)),
            });
        }
    }
    *budget -= states.len();
    Ok(Some(SiteReport {
        states,
        others,
        targets,
        digest,
    }))
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
            write_site_evidence(&mut w, r.sites.as_ref());
        }
        match &self.kernel_code {
            Some(d) => w.u8(1).raw(d.as_bytes()),
            None => w.u8(0),
        };
        write_site_evidence(&mut w, self.kernel_code_sites.as_ref());
        w.bytes(self.agent_version.as_bytes());
        write_key_ids(&mut w, &self.key_ids);
        Ok(w.envelope(Kind::Evidence))
    }

    fn decode(bytes: &[u8]) -> Result<Evidence, RecordError> {
        let (mut r, version) = crate::wire::open_versioned(bytes, Kind::Evidence)?;
        let v2 = version >= 2;
        let mut budget = MAX_REPORT_SITES;
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
            let sites = if v2 {
                read_site_evidence(&mut r, alg, &mut budget, version)?
            } else {
                None
            };
            regions.push(RegionDigest {
                name,
                pages,
                digest,
                sites,
            });
        }
        let kernel_code = read_optional_digest(&mut r, alg)?;
        let kernel_code_sites = if v2 {
            read_site_evidence(&mut r, alg, &mut budget, version)?
        } else {
            None
        };
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
            kernel_code_sites,
            agent_version,
            key_ids,
        })
    }

    fn key_ids(&self) -> &[KeyId] {
        &self.key_ids
    }
}
