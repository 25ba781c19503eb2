//! The simulated VM every agent attests: a one-region policy over four deterministic fake RAM
//! pages (or, with patch sites, a kernel-sized code region with a jump table and, if asked,
//! static calls), its golden baseline, and signed evidence for a challenge.

use std::time::SystemTime;

use vmattest_api::{Provenance, RegionPages};
use vmattest_core::alg::{Digest, HashAlg, PAGE_SIZE, PageIndex};
use vmattest_core::attest::patch::{self, CALL_SITE_LEN, MAX_SITE_LEN, SiteReport, SiteState};
use vmattest_core::attest::static_call;
use vmattest_core::attest::{
    Evidence, GuestAddr, PatchSite, Policy, RegionDigest, SiteEvidence, SiteKind, page_digest,
    region_digest, sample_pages,
};
use vmattest_core::record::UnixTime;
use vmattest_sign::{SecretKey, Signer};

/// The policy's only region.
pub const REGION: &str = "kernel-rodata";
/// Pages of the region (and of the fake RAM).
pub const REGION_PAGES: u64 = 4;
const REGION_START: u64 = 0x0100_0000;
pub const AGENT_VERSION: &str = concat!("vmattest-loadgen/", env!("CARGO_PKG_VERSION"));

/// The resolved policy the benchmark registers: one region of 4 pages, every page hashed
/// (`sample = 0`) with SHA-256. With `sites` patch sites, the region is kernel code of one page
/// per 1.75 sites (as in a distribution kernel: 6,300 sites in 3,600 pages), with a jump table;
/// with `calls` static-call sites and trampolines also with static calls.
pub fn policy(name: &str, sites: u32, calls: u32) -> Result<Policy, String> {
    let pages = region_pages(sites);
    let table_at = REGION_START + pages * PAGE_SIZE as u64;
    let mut table = if sites == 0 {
        String::new()
    } else {
        format!(
            "\n[jump_table]\nstart = {table_at:#x}\nlen = {:#x}\n",
            u64::from(sites) * patch::JUMP_ENTRY_BYTES
        )
    };
    if sites > 0 && calls > 0 {
        // Where the tables would be; the server reads only the baseline's sites.
        table.push_str(&format!(
            "\n[static_calls]\nsites_start = {:#x}\nsites_len = {:#x}\n\
             trampolines_start = {:#x}\ntrampolines_len = 0x8\n",
            table_at + 0x10_0000,
            u64::from(calls) * static_call::SITE_ENTRY_BYTES,
            table_at + 0x20_0000,
        ));
    }
    let text = format!(
        "name = {name:?}\nhash = \"sha256\"\nschedule_secs = 60\n{table}\n[[region]]\n\
         name = {REGION:?}\nstart = {REGION_START:#x}\nlen = {:#x}\nweight = 10\n\
         critical = true\nkernel_code = {}\nsample = 0\n",
        pages * PAGE_SIZE as u64,
        sites > 0
    );
    Policy::parse(&text, None).map_err(|e| format!("benchmark policy: {e}"))
}

fn region_pages(sites: u32) -> u64 {
    REGION_PAGES.max(u64::from(sites) * 4 / 7)
}

/// `n` jump labels spread evenly over `region` (5 bytes each at 16-byte-aligned addresses,
/// jumping 0x40 bytes on), then `calls` static-call sites 8 bytes past 16-byte-aligned
/// addresses: one in 7 a trampoline, the rest inline calls in groups of 6 per key.
fn fake_sites(policy: &Policy, n: u32, calls: u32) -> Vec<PatchSite> {
    let Some(region) = policy.regions.first() else {
        return Vec::new();
    };
    let step = |n: u32| (region.len() / u64::from(n.max(1))) & !15;
    let labels = (0..u64::from(n)).map(|i| {
        let addr = region.start.0 + i * step(n);
        PatchSite {
            addr: GuestAddr(addr),
            len: 5,
            target: GuestAddr(addr + 0x40),
            kind: SiteKind::Label,
        }
    });
    let calls = (0..u64::from(calls)).map(|i| PatchSite {
        addr: GuestAddr(region.start.0 + i * step(calls) + 8),
        len: CALL_SITE_LEN,
        target: GuestAddr(if i % 7 == 6 { 0 } else { KEYS + i / 6 * 16 }),
        kind: if i % 7 == 6 {
            SiteKind::Trampoline
        } else {
            SiteKind::Call
        },
    });
    let mut all: Vec<PatchSite> = labels.chain(calls).collect();
    all.sort_unstable();
    all
}

/// Where the fake static calls' keys are.
const KEYS: u64 = 0x4000_0000;

/// Page `index` of region `region` of the fake RAM: the same bytes on every run.
pub fn fake_page(region: &str, index: u64) -> Vec<u8> {
    let seed = HashAlg::Sha256.hash(&[
        b"vmattest-loadgen page\0",
        region.as_bytes(),
        &index.to_be_bytes(),
    ]);
    let seed = seed.as_bytes();
    (0..PAGE_SIZE)
        .map(|i| seed[i % seed.len()] ^ (i / seed.len()).to_le_bytes()[0])
        .collect()
}

/// A VM whose memory never changes: its page digests are computed once.
#[derive(Clone, Debug)]
pub struct FakeVm {
    policy: Policy,
    /// Per policy region, in policy order: one digest per page.
    pages: Vec<Vec<Digest>>,
    sites: Vec<PatchSite>,
    /// The report of every site (one in 16 jumping), when there are sites.
    report: Option<SiteReport>,
    /// Its fingerprint, found once: a challenge naming it lets evidence name the report.
    print: Option<Digest>,
    /// Digest over every page of each region, for regions hashed whole.
    full: Vec<Digest>,
}

impl FakeVm {
    pub fn new(policy: Policy, sites: u32, calls: u32) -> FakeVm {
        let sites = fake_sites(&policy, sites, calls);
        let text = policy.text().unwrap_or_default();
        let pages: Vec<Vec<Digest>> = policy
            .regions
            .iter()
            .map(|r| {
                (0..r.pages)
                    .map(|i| {
                        let mut page = fake_page(&r.name, i);
                        patch::mask_page(&mut page, r.page_addr(PageIndex(i)), &sites);
                        page_digest(policy.alg, &page)
                    })
                    .collect()
            })
            .collect();
        let full = policy
            .regions
            .iter()
            .zip(&pages)
            .map(|(r, list)| {
                let all: Vec<(PageIndex, Digest)> = list
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (PageIndex(i as u64), *d))
                    .collect();
                region_digest(policy.alg, &r.name, &all)
            })
            .collect();
        let report = (!sites.is_empty()).then(|| {
            let read: Vec<Vec<u8>> = sites
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let e = match s.kind {
                        SiteKind::Label if i % 16 == 0 => s.encoding(SiteState::Jump),
                        SiteKind::Label => s.encoding(SiteState::Nop),
                        // Each call goes to a place of its own in the region.
                        _ => {
                            let to = text.0 + (s.target.0.max(s.addr.0) * 64) % (text.1 - text.0);
                            let st = if s.kind == SiteKind::Call {
                                SiteState::Call
                            } else {
                                SiteState::Jump
                            };
                            s.encoding_to(st, to & !15)
                        }
                    };
                    e.unwrap_or([0; MAX_SITE_LEN])[..usize::from(s.len)].to_vec()
                })
                .collect();
            patch::report(policy.alg, &sites, &read)
        });
        FakeVm {
            policy,
            pages,
            sites,
            print: report.as_ref().map(SiteReport::fingerprint),
            report,
            full,
        }
    }

    /// The baseline's jump-label sites, as the API takes them.
    pub fn patch_sites(&self) -> Vec<(u64, u8, u64)> {
        self.sites
            .iter()
            .filter(|s| s.kind == SiteKind::Label)
            .map(|s| (s.addr.0, s.len, s.target.0))
            .collect()
    }

    /// The baseline's static-call sites, as the API takes them.
    pub fn call_sites(&self) -> Vec<(u64, u8, u64)> {
        self.sites
            .iter()
            .filter(|s| s.kind != SiteKind::Label)
            .map(|s| (s.addr.0, s.kind.id(), s.target.0))
            .collect()
    }

    #[cfg(test)]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The golden baseline: every page digest of every region.
    pub fn baseline_regions(&self) -> Vec<RegionPages> {
        self.policy
            .regions
            .iter()
            .zip(&self.pages)
            .map(|(r, pages)| RegionPages {
                name: r.name.clone(),
                pages: pages.iter().map(Digest::to_hex).collect(),
            })
            .collect()
    }

    /// Plausible provenance for the baseline of `vm`: a snapshot link at seq 1.
    pub fn provenance(&self, vm: &str, signer: &SecretKey) -> Provenance {
        let h = |what: &str| {
            HashAlg::Sha256
                .hash(&[
                    b"vmattest-loadgen provenance\0",
                    what.as_bytes(),
                    vm.as_bytes(),
                ])
                .to_hex()
        };
        Provenance {
            store_vm_id: h("store"),
            seq: 1,
            link_digest: h("link"),
            state_root: h("state"),
            signer_key_ids: vec![signer.key_id().to_hex()],
            snapshot_time: now(),
            component: "ram".into(),
        }
    }

    /// Evidence for a challenge's nonce and subset, measured now and naming `key`. The site
    /// report is named by fingerprint when it is the one the challenge says the server holds
    /// (`known`).
    pub fn evidence(
        &self,
        vm: &str,
        nonce: &[u8],
        subset: &str,
        key: &SecretKey,
        time: UnixTime,
        known: Option<&str>,
    ) -> Result<Evidence, String> {
        let sites = self.report.as_ref().map(|r| match self.print {
            Some(print) if known.is_some_and(|k| k == print.to_hex()) => SiteEvidence::Same(print),
            _ => SiteEvidence::Whole(r.clone()),
        });
        let sub = self
            .policy
            .subset(subset)
            .ok_or_else(|| format!("the challenge names subset {subset:?}, not in the policy"))?;
        let mut regions = Vec::with_capacity(sub.regions.len());
        for name in &sub.regions {
            let (i, region) = self
                .policy
                .regions
                .iter()
                .enumerate()
                .find(|(_, r)| &r.name == name)
                .ok_or_else(|| format!("subset {subset} names unknown region {name}"))?;
            let sample = sample_pages(nonce, region);
            let digest = if sample.len() as u64 == region.pages {
                self.full[i]
            } else {
                let picked: Vec<(PageIndex, Digest)> = sample
                    .iter()
                    .filter_map(|p| {
                        let d = self.pages[i].get(usize::try_from(p.0).ok()?)?;
                        Some((*p, *d))
                    })
                    .collect();
                region_digest(self.policy.alg, name, &picked)
            };
            regions.push(RegionDigest {
                name: name.clone(),
                pages: sample.len() as u64,
                digest,
                sites: sites.clone(),
            });
        }
        let kernel = self.policy.regions.iter().position(|r| r.kernel_code);
        Ok(Evidence {
            vm: vm.to_string(),
            time,
            nonce: nonce.to_vec(),
            alg: self.policy.alg,
            policy_id: self.policy.id(),
            subset: subset.to_string(),
            regions,
            kernel_code: kernel.map(|i| self.full[i]),
            // The region is hashed whole in every subset: its report stands for kernel code.
            kernel_code_sites: None,
            agent_version: AGENT_VERSION.into(),
            key_ids: vec![key.key_id()],
        })
    }
}

/// The evidence's canonical signed bytes, as posted to `/v1/evidence`.
pub fn sign(evidence: Evidence, key: &SecretKey) -> Result<Vec<u8>, String> {
    vmattest_sign::signing::sign(evidence, &[key])
        .map_err(|e| format!("sign evidence: {e}"))?
        .encode()
        .map_err(|e| format!("encode evidence: {e}"))
}

pub fn now() -> UnixTime {
    UnixTime::from_system(SystemTime::now())
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::cast_possible_truncation
    )]

    use super::*;
    use vmattest_core::record::Signed;
    use vmattest_sign::SigAlg;
    use vmattest_sign::record::verify_signed;

    #[test]
    fn policy_is_resolved_and_round_trips() {
        let p = policy("loadgen-test", 0, 0).unwrap();
        assert_eq!(p.regions.len(), 1);
        assert_eq!(p.regions[0].pages, REGION_PAGES);
        assert_eq!(p.regions[0].sample, 0);
        assert_eq!(p.alg, HashAlg::Sha256);
        assert!(p.subset("all").is_some());
        let again = Policy::parse(&p.to_toml(), None).unwrap();
        assert_eq!(again, p);
        assert_eq!(again.id(), p.id());
    }

    #[test]
    fn fake_pages_are_deterministic_and_distinct() {
        assert_eq!(fake_page(REGION, 0), fake_page(REGION, 0));
        assert_ne!(fake_page(REGION, 0), fake_page(REGION, 1));
        assert_eq!(fake_page(REGION, 3).len(), PAGE_SIZE);
    }

    #[test]
    fn evidence_signs_verifies_and_matches_the_baseline() {
        let vm = FakeVm::new(policy("loadgen-test", 0, 0).unwrap(), 0, 0);
        let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let nonce = [7u8; 32];
        let ev = vm
            .evidence("vm-1", &nonce, "all", &key, now(), None)
            .unwrap();
        let bytes = sign(ev.clone(), &key).unwrap();

        let decoded = Signed::<Evidence>::decode(&bytes).unwrap();
        assert_eq!(decoded.value(), &ev);
        verify_signed(&decoded, &[key.public_key()]).unwrap();
        let other = SecretKey::generate(SigAlg::Ed25519).unwrap();
        assert!(verify_signed(&decoded, &[other.public_key()]).is_err());

        // What a server recomputes from the baseline's page digests.
        let baseline = vm.baseline_regions();
        assert_eq!(baseline.len(), 1);
        assert_eq!(baseline[0].pages.len(), REGION_PAGES as usize);
        let region = &vm.policy().regions[0];
        let pages: Vec<(PageIndex, Digest)> = sample_pages(&nonce, region)
            .into_iter()
            .map(|p| {
                let hex = &baseline[0].pages[p.0 as usize];
                (
                    p,
                    Digest::new(HashAlg::Sha256, &hex::decode(hex).unwrap()).unwrap(),
                )
            })
            .collect();
        assert_eq!(pages.len(), REGION_PAGES as usize);
        assert_eq!(
            ev.regions[0].digest,
            region_digest(HashAlg::Sha256, REGION, &pages)
        );
        assert_eq!(ev.regions[0].pages, REGION_PAGES);
        assert_eq!(ev.policy_id, vm.policy().id());
        assert_eq!(ev.key_ids, vec![key.key_id()]);
    }

    #[test]
    fn evidence_with_patch_sites_passes_the_server_check() {
        let vm = FakeVm::new(policy("loadgen-test", 6300, 0).unwrap(), 6300, 0);
        let region = vm.policy().regions[0].clone();
        assert_eq!(region.pages, 3600);
        assert!(region.kernel_code && vm.policy().jump_table.is_some());
        let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let ev = vm
            .evidence("vm-1", &[7u8; 32], "all", &key, now(), None)
            .unwrap();
        let report = ev.regions[0].sites.clone().unwrap();
        let report = report.whole().unwrap();
        assert_eq!(report.states.len(), 6300);
        patch::check_report(HashAlg::Sha256, &vm.sites, report, None).unwrap();
        assert!(ev.kernel_code_sites.is_none());
        // Only the jumping sites are listed: the evidence stays small.
        let bytes = sign(ev, &key).unwrap();
        assert!(bytes.len() < 3 * 1024, "{} bytes", bytes.len());
    }

    /// As the test guest's kernel: 6,300 jump labels, 4,013 static-call sites and 686
    /// trampolines. States are packed: the evidence stays near 12 KB.
    #[test]
    fn evidence_with_static_calls_passes_the_server_check() {
        let vm = FakeVm::new(policy("loadgen-test", 6300, 4700).unwrap(), 6300, 4700);
        let text = vm.policy().text();
        assert!(vm.policy().static_calls.is_some());
        let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let ev = vm
            .evidence("vm-1", &[7u8; 32], "all", &key, now(), None)
            .unwrap();
        let report = ev.regions[0].sites.clone().unwrap();
        let report = report.whole().unwrap();
        assert_eq!(report.states.len(), 11_000);
        // 671 trampolines (one in 7) and 784 keys (i / 6 for i below 4,700).
        assert_eq!(report.targets.len(), 671 + 784);
        assert!(report.targets.iter().all(Option::is_some));
        patch::check_report(HashAlg::Sha256, &vm.sites, report, text).unwrap();
        let bytes = sign(ev, &key).unwrap();
        assert!(bytes.len() < 16 * 1024, "{} bytes", bytes.len());
        // Named by the fingerprint a challenge gives, the report takes 33 bytes.
        let print = report.fingerprint();
        let named = vm.evidence(
            "vm-1",
            &[7u8; 32],
            "all",
            &key,
            now(),
            Some(&print.to_hex()),
        );
        let named = named.unwrap();
        assert_eq!(named.regions[0].sites, Some(SiteEvidence::Same(print)));
        assert!(sign(named, &key).unwrap().len() < 1024);
    }

    #[test]
    fn unknown_subset_is_refused() {
        let vm = FakeVm::new(policy("loadgen-test", 0, 0).unwrap(), 0, 0);
        let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
        assert!(
            vm.evidence("vm-1", &[1; 16], "nope", &key, now(), None)
                .is_err()
        );
    }

    #[test]
    fn provenance_is_hex() {
        let vm = FakeVm::new(policy("loadgen-test", 0, 0).unwrap(), 0, 0);
        let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let p = vm.provenance("vm-1", &key);
        for h in [&p.store_vm_id, &p.link_digest, &p.state_root] {
            assert_eq!(h.len(), 64);
            assert!(hex::decode(h).is_ok());
        }
        assert_eq!(p.signer_key_ids, vec![key.key_id().to_hex()]);
    }
}
