//! Region policies: which guest-physical memory an agent hashes, how, and how often.
//!
//! A policy is written in TOML (docs/POLICY.md). Regions name a guest-physical range or a pair
//! of kernel symbols; [`PolicyFile::resolve`] turns symbols into ranges with a System.map and
//! the kernel's physical load address, giving a [`Policy`] of ranges only. The policy id is a
//! digest of the resolved policy's canonical encoding, so agent, server and auditor agree on
//! exactly which bytes were measured.

use serde::Deserialize;

use super::symbols::SystemMap;
use super::{AttestError, GuestAddr};
use crate::alg::{Digest, HashAlg, PAGE_SIZE, PageIndex};
use crate::chain::is_valid_name;
use crate::wire::Writer;

pub const MAX_POLICY_BYTES: usize = 256 * 1024;
pub const MAX_REGIONS: usize = 256;
pub const MAX_SUBSETS: usize = 64;
/// 1 GiB per region: the agent hashes regions while the guest runs.
pub const MAX_REGION_BYTES: u64 = 1 << 30;
pub const MIN_SCHEDULE_SECS: u64 = 1;
const POLICY_ID_DOMAIN: &[u8] = b"vmattest region-policy v1\0";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub name: String,
    #[serde(default = "default_hash")]
    pub hash: String,
    #[serde(default = "default_schedule")]
    pub schedule_secs: u64,
    /// Guest-physical address of the kernel symbol `_text` (needed by symbol regions).
    pub kernel_load: Option<u64>,
    /// The kernel's jump table, whose sites may change (docs/POLICY.md).
    pub jump_table: Option<TableFile>,
    /// The kernel's static-call sites and trampolines, whose targets may change.
    pub static_calls: Option<StaticCallsFile>,
    #[serde(rename = "region", default)]
    pub regions: Vec<RegionFile>,
    #[serde(rename = "subset", default)]
    pub subsets: Vec<SubsetFile>,
}

fn default_hash() -> String {
    "sha256".into()
}

fn default_schedule() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionFile {
    pub name: String,
    pub start: Option<u64>,
    pub len: Option<u64>,
    /// `[first, end]`: from the first symbol's page to the page holding the byte before `end`.
    pub symbols: Option<[String; 2]>,
    /// One symbol and `len` bytes from it (a table such as `sys_call_table`).
    pub symbol: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub critical: bool,
    /// The region holding kernel code; its full digest is reported on its own.
    #[serde(default)]
    pub kernel_code: bool,
    /// Pages hashed per evidence, chosen from the server's nonce; 0 hashes every page.
    #[serde(default)]
    pub sample: u32,
}

fn default_weight() -> u32 {
    1
}

/// A byte range given as `start` and `len` or as a pair of symbols.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFile {
    pub start: Option<u64>,
    pub len: Option<u64>,
    pub symbols: Option<[String; 2]>,
}

/// `[static_calls]`: the site table and the trampolines' text, each as a pair of symbols or
/// as start and len.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCallsFile {
    pub sites: Option<[String; 2]>,
    pub sites_start: Option<u64>,
    pub sites_len: Option<u64>,
    pub trampolines: Option<[String; 2]>,
    pub trampolines_start: Option<u64>,
    pub trampolines_len: Option<u64>,
}

/// The guest-physical bytes of the kernel's `.static_call_sites` and `.static_call.text`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticCalls {
    pub sites: JumpTable,
    pub trampolines: JumpTable,
}

/// The guest-physical bytes of a kernel table (`__jump_table` and the static-call tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JumpTable {
    pub start: GuestAddr,
    pub len: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetFile {
    pub id: String,
    pub regions: Vec<String>,
}

/// A region resolved to whole guest-physical pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub name: String,
    pub start: GuestAddr,
    pub pages: u64,
    pub weight: u32,
    pub critical: bool,
    pub kernel_code: bool,
    pub sample: u32,
}

impl Region {
    pub fn len(&self) -> u64 {
        self.pages * PAGE_SIZE as u64
    }

    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    pub fn end(&self) -> u64 {
        self.start.0 + self.len()
    }

    /// Guest-physical address of page `i` of the region.
    pub fn page_addr(&self, i: PageIndex) -> u64 {
        self.start
            .0
            .saturating_add(i.0.saturating_mul(PAGE_SIZE as u64))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subset {
    pub id: String,
    pub regions: Vec<String>,
}

/// A resolved policy: physical ranges only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub alg: HashAlg,
    pub schedule_secs: u64,
    pub jump_table: Option<JumpTable>,
    pub static_calls: Option<StaticCalls>,
    pub regions: Vec<Region>,
    pub subsets: Vec<Subset>,
}

fn bad(field: impl Into<String>, expected: &str, found: impl ToString) -> AttestError {
    AttestError::Policy {
        field: field.into(),
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

impl PolicyFile {
    pub fn parse(text: &str) -> Result<PolicyFile, AttestError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(bad(
                "policy",
                &format!("at most {MAX_POLICY_BYTES} bytes"),
                text.len(),
            ));
        }
        toml::from_str(text).map_err(|e| AttestError::PolicySyntax(e.message().to_string()))
    }

    /// Whether any region is given by symbols (and so needs a System.map).
    pub fn needs_symbols(&self) -> bool {
        self.regions.iter().any(|r| r.symbols.is_some())
    }

    pub fn resolve(&self, map: Option<&SystemMap>) -> Result<Policy, AttestError> {
        if !is_valid_name(&self.name, 64) {
            return Err(bad("name", "1-64 of [A-Za-z0-9._-]", &self.name));
        }
        let alg = HashAlg::from_name(&self.hash)
            .ok_or_else(|| bad("hash", "blake3, sha256 or sha384", &self.hash))?;
        if self.schedule_secs < MIN_SCHEDULE_SECS {
            return Err(bad("schedule_secs", "at least 1", self.schedule_secs));
        }
        if self.regions.is_empty() || self.regions.len() > MAX_REGIONS {
            return Err(bad(
                "region",
                &format!("1 to {MAX_REGIONS} regions"),
                self.regions.len(),
            ));
        }
        let mut regions = Vec::with_capacity(self.regions.len());
        for r in &self.regions {
            regions.push(self.resolve_region(r, map)?);
        }
        if regions.iter().filter(|r| r.kernel_code).count() > 1 {
            return Err(bad("kernel_code", "at most one region", "several"));
        }
        let subsets = self.subsets(&regions)?;
        let jump_table = match &self.jump_table {
            Some(t) => Some(self.resolve_table(
                "jump_table",
                (&t.symbols, t.start, t.len),
                super::patch::JUMP_ENTRY_BYTES,
                super::patch::MAX_JUMP_TABLE_BYTES,
                map,
            )?),
            None => None,
        };
        let static_calls = match &self.static_calls {
            Some(t) => Some(self.resolve_static_calls(t, &regions, map)?),
            None => None,
        };
        Ok(Policy {
            name: self.name.clone(),
            alg,
            schedule_secs: self.schedule_secs,
            jump_table,
            static_calls,
            regions,
            subsets,
        })
    }

    /// `[start, end)` of a range given by two symbols, or by one symbol and a length.
    fn symbol_range(
        &self,
        field: &str,
        names: (&str, Option<&str>),
        len: Option<u64>,
        map: Option<&SystemMap>,
    ) -> Result<(u64, u64), AttestError> {
        let map = map.ok_or_else(|| bad(field, "a System.map", "none given"))?;
        let load = self
            .kernel_load
            .ok_or_else(|| bad("kernel_load", "the physical address of _text", "none"))?;
        let start = map.phys(names.0, load)?;
        let end = match (names.1, len) {
            (Some(last), None) => map.phys(last, load)?,
            (None, Some(len)) => start
                .checked_add(len)
                .ok_or_else(|| bad(field, "start + len below 2^64", len))?,
            _ => return Err(bad(field, "symbols, or symbol and len", "neither or both")),
        };
        Ok((start, end))
    }

    /// A table given by `(symbols, start, len)`, a positive multiple of `unit` bytes.
    fn resolve_table(
        &self,
        field: &str,
        given: (&Option<[String; 2]>, Option<u64>, Option<u64>),
        unit: u64,
        max: u64,
        map: Option<&SystemMap>,
    ) -> Result<JumpTable, AttestError> {
        let (start, end) = match given {
            (Some([a, b]), None, None) => {
                self.symbol_range(&format!("{field}.symbols"), (a, Some(b)), None, map)?
            }
            (None, Some(start), Some(len)) => (start, start.saturating_add(len)),
            _ => {
                return Err(bad(field, "start and len, or symbols", "neither or both"));
            }
        };
        let len = end.saturating_sub(start);
        if len == 0 || !len.is_multiple_of(unit) {
            return Err(bad(
                format!("{field}.len"),
                &format!("a positive multiple of {unit} bytes"),
                len,
            ));
        }
        if len > max {
            return Err(bad(
                format!("{field}.len"),
                &format!("at most {max} bytes"),
                len,
            ));
        }
        Ok(JumpTable {
            start: GuestAddr(start),
            len,
        })
    }

    /// Static calls need the kernel-code region: their targets must lie in it.
    fn resolve_static_calls(
        &self,
        t: &StaticCallsFile,
        regions: &[Region],
        map: Option<&SystemMap>,
    ) -> Result<StaticCalls, AttestError> {
        use super::static_call::{MAX_TABLE_BYTES, SITE_ENTRY_BYTES, TRAMPOLINE_BYTES};
        if !regions.iter().any(|r| r.kernel_code) {
            return Err(bad(
                "static_calls",
                "a kernel_code region (static calls must go into it)",
                "none",
            ));
        }
        let sites = self.resolve_table(
            "static_calls.sites",
            (&t.sites, t.sites_start, t.sites_len),
            SITE_ENTRY_BYTES,
            MAX_TABLE_BYTES,
            map,
        )?;
        let trampolines = self.resolve_table(
            "static_calls.trampolines",
            (&t.trampolines, t.trampolines_start, t.trampolines_len),
            TRAMPOLINE_BYTES,
            MAX_TABLE_BYTES,
            map,
        )?;
        Ok(StaticCalls { sites, trampolines })
    }

    fn resolve_region(
        &self,
        r: &RegionFile,
        map: Option<&SystemMap>,
    ) -> Result<Region, AttestError> {
        let field = |f: &str| format!("region {}.{f}", r.name);
        if !is_valid_name(&r.name, 64) {
            return Err(bad("region.name", "1-64 of [A-Za-z0-9._-]", &r.name));
        }
        let (start, end) = match (&r.symbols, &r.symbol, r.start, r.len) {
            (Some([first, last]), None, None, None) => {
                self.symbol_range(&field("symbols"), (first, Some(last)), None, map)?
            }
            (None, Some(sym), None, Some(len)) => {
                self.symbol_range(&field("symbol"), (sym, None), Some(len), map)?
            }
            (None, None, Some(start), Some(len)) => {
                let end = start
                    .checked_add(len)
                    .ok_or_else(|| bad(field("len"), "start + len below 2^64", len))?;
                (start, end)
            }
            _ => {
                return Err(bad(
                    field("start"),
                    "start and len, symbols, or symbol and len",
                    "neither or both",
                ));
            }
        };
        let page = PAGE_SIZE as u64;
        let first = start / page * page;
        let last = end.div_ceil(page).checked_mul(page).ok_or_else(|| {
            bad(
                field("len"),
                "a region ending below the last page of 2^64",
                end,
            )
        })?;
        if last <= first || last - first > MAX_REGION_BYTES {
            return Err(bad(
                field("len"),
                &format!("1 to {MAX_REGION_BYTES} bytes"),
                end.saturating_sub(start),
            ));
        }
        let pages = (last - first) / page;
        if u64::from(r.sample) > pages {
            return Err(bad(
                field("sample"),
                &format!("at most {pages} pages"),
                r.sample,
            ));
        }
        if r.weight == 0 || r.weight > 1000 {
            return Err(bad(field("weight"), "1 to 1000", r.weight));
        }
        Ok(Region {
            name: r.name.clone(),
            start: GuestAddr(first),
            pages,
            weight: r.weight,
            critical: r.critical,
            kernel_code: r.kernel_code,
            sample: r.sample,
        })
    }

    fn subsets(&self, regions: &[Region]) -> Result<Vec<Subset>, AttestError> {
        let mut names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad("region.name", "unique names", "a repeated name"));
        }
        // `all` is added when missing, so the printed policy may list one more: counted
        // without `all`, a resolved policy always parses back.
        let named = self.subsets.iter().filter(|s| s.id != "all").count();
        if named > MAX_SUBSETS {
            return Err(bad(
                "subset",
                &format!("at most {MAX_SUBSETS} besides all"),
                named,
            ));
        }
        let mut out: Vec<Subset> = Vec::new();
        for s in &self.subsets {
            if !is_valid_name(&s.id, 64) || out.iter().any(|o| o.id == s.id) {
                return Err(bad("subset.id", "a unique name", &s.id));
            }
            if s.regions.is_empty() {
                return Err(bad(format!("subset {}.regions", s.id), "at least one", 0));
            }
            let mut picked: Vec<String> = Vec::new();
            for name in &s.regions {
                if names.binary_search(&name.as_str()).is_err() {
                    return Err(bad(
                        format!("subset {}.regions", s.id),
                        "a region name",
                        name,
                    ));
                }
                if !picked.contains(name) {
                    picked.push(name.clone());
                }
            }
            // Canonical order: the policy's region order.
            picked.sort_by_key(|n| regions.iter().position(|r| &r.name == n));
            out.push(Subset {
                id: s.id.clone(),
                regions: picked,
            });
        }
        if !out.iter().any(|s| s.id == "all") {
            out.push(Subset {
                id: "all".into(),
                regions: regions.iter().map(|r| r.name.clone()).collect(),
            });
        }
        Ok(out)
    }
}

impl Policy {
    pub fn parse(text: &str, map: Option<&SystemMap>) -> Result<Policy, AttestError> {
        PolicyFile::parse(text)?.resolve(map)
    }

    /// The canonical encoding the policy id is taken over.
    pub fn canonical(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(POLICY_ID_DOMAIN)
            .bytes(self.name.as_bytes())
            .u8(self.alg.id())
            .u64(self.schedule_secs)
            .u32(u32::try_from(self.regions.len()).unwrap_or(u32::MAX));
        for r in &self.regions {
            w.bytes(r.name.as_bytes())
                .u64(r.start.0)
                .u64(r.pages)
                .u32(r.weight)
                .u8(u8::from(r.critical))
                .u8(u8::from(r.kernel_code))
                .u32(r.sample);
        }
        w.u32(u32::try_from(self.subsets.len()).unwrap_or(u32::MAX));
        for s in &self.subsets {
            w.bytes(s.id.as_bytes())
                .u32(u32::try_from(s.regions.len()).unwrap_or(u32::MAX));
            for n in &s.regions {
                w.bytes(n.as_bytes());
            }
        }
        // Appended only when present, so that the ids of policies without one stay as they were.
        if let Some(t) = &self.jump_table {
            w.u8(1).u64(t.start.0).u64(t.len);
        }
        if let Some(t) = &self.static_calls {
            w.u8(2)
                .u64(t.sites.start.0)
                .u64(t.sites.len)
                .u64(t.trampolines.start.0)
                .u64(t.trampolines.len);
        }
        w.finish()
    }

    /// SHA-256 of the canonical encoding.
    pub fn id(&self) -> Digest {
        HashAlg::Sha256.hash(&[&self.canonical()])
    }

    /// Whether evidence reports patch sites (a jump table or static calls).
    pub fn has_sites(&self) -> bool {
        self.jump_table.is_some() || self.static_calls.is_some()
    }

    /// `[start, end)` of the kernel-code region, where static calls may go.
    pub fn text(&self) -> Option<(u64, u64)> {
        self.regions
            .iter()
            .find(|r| r.kernel_code)
            .map(|r| (r.start.0, r.end()))
    }

    pub fn subset(&self, id: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.id == id)
    }

    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The resolved policy as TOML, which parses back to an equal policy with no System.map.
    pub fn to_toml(&self) -> String {
        use core::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "name = {:?}", self.name);
        let _ = writeln!(s, "hash = {:?}", self.alg.name());
        let _ = writeln!(s, "schedule_secs = {}", self.schedule_secs);
        if let Some(t) = &self.jump_table {
            let _ = writeln!(
                s,
                "\n[jump_table]\nstart = {:#x}\nlen = {:#x}",
                t.start.0, t.len
            );
        }
        if let Some(t) = &self.static_calls {
            let _ = writeln!(
                s,
                "\n[static_calls]\nsites_start = {:#x}\nsites_len = {:#x}\ntrampolines_start = {:#x}\ntrampolines_len = {:#x}",
                t.sites.start.0, t.sites.len, t.trampolines.start.0, t.trampolines.len
            );
        }
        for r in &self.regions {
            let _ = write!(
                s,
                "\n[[region]]\nname = {:?}\nstart = {:#x}\nlen = {:#x}\nweight = {}\ncritical = {}\nkernel_code = {}\nsample = {}\n",
                r.name,
                r.start.0,
                r.len(),
                r.weight,
                r.critical,
                r.kernel_code,
                r.sample
            );
        }
        for sub in &self.subsets {
            let names: Vec<String> = sub.regions.iter().map(|n| format!("{n:?}")).collect();
            let _ = write!(
                s,
                "\n[[subset]]\nid = {:?}\nregions = [{}]\n",
                sub.id,
                names.join(", ")
            );
        }
        s
    }
}
