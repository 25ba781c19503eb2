//! What workflows did, as the JSON every front end prints: one shape per kind of result, so
//! that the command line, the agent and a host daemon report alike (docs/ERRORS.md for errors).

use std::fmt;
use std::path::Path;

use serde::Serialize;
use vmattest_core::chain::{ComponentRoot, SignedLink, link_digest};
use vmattest_core::record::{ImageMeasurement, MeasurementRecord};
use vmattest_core::tree::PageProof;
use vmattest_store::{ImportSummary, TakeSummary, Verified};

#[derive(Debug, Serialize)]
pub struct ImageJson {
    pub path: String,
    pub alg: &'static str,
    pub root: String,
    pub pages: u64,
    pub bytes: u64,
    pub salt: String,
}

impl From<&ImageMeasurement> for ImageJson {
    fn from(m: &ImageMeasurement) -> ImageJson {
        ImageJson {
            path: m.path.clone(),
            alg: m.params.alg().name(),
            root: m.root.to_hex(),
            pages: m.pages(),
            bytes: m.len,
            salt: hex::encode(m.params.salt()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ComponentJson {
    pub name: String,
    pub kind: &'static str,
    pub bytes: u64,
    pub root: String,
}

pub fn components_json(c: &[ComponentRoot]) -> Vec<ComponentJson> {
    c.iter()
        .map(|c| ComponentJson {
            name: c.name.clone(),
            kind: c.kind.name(),
            bytes: c.len,
            root: c.root.to_hex(),
        })
        .collect()
}

/// A verified chain state.
#[derive(Debug, Serialize)]
pub struct VerifiedJson {
    pub ok: bool,
    pub base: u64,
    pub seq: u64,
    pub link: String,
    pub state_root: String,
    pub time: String,
    pub components: Vec<ComponentJson>,
    /// Where the components were written, if anywhere.
    pub out: Option<String>,
}

pub fn verified_json(v: &Verified, out: Option<&Path>) -> VerifiedJson {
    VerifiedJson {
        ok: true,
        base: v.base.0,
        seq: v.seq.0,
        link: v.link.to_hex(),
        state_root: v.state_root.to_hex(),
        time: v.time.to_string(),
        components: components_json(&v.components),
        out: out.map(|p| p.display().to_string()),
    }
}

/// The fields every take reports, from files or from a VM.
#[derive(Debug, Serialize)]
pub struct SummaryJson {
    pub seq: u64,
    pub link: String,
    pub state_root: String,
    pub changed_pages: u64,
    pub zero_pages: u64,
    pub total_pages: u64,
    pub stored_bytes: u64,
    /// Whether the link is an anchor, and the unchanged pages it stored for that.
    pub anchor: bool,
    pub carried_pages: u64,
    pub components: Vec<ComponentJson>,
}

impl SummaryJson {
    /// ", anchor (N pages carried)" for an anchor, nothing otherwise.
    fn anchor_note(&self) -> String {
        if self.anchor {
            format!(", anchor ({} pages carried)", self.carried_pages)
        } else {
            String::new()
        }
    }
}

impl From<&TakeSummary> for SummaryJson {
    fn from(s: &TakeSummary) -> SummaryJson {
        SummaryJson {
            seq: s.seq.0,
            link: s.link.to_hex(),
            state_root: s.state_root.to_hex(),
            changed_pages: s.changed_pages,
            zero_pages: s.zero_pages,
            total_pages: s.total_pages,
            stored_bytes: s.stored_bytes,
            anchor: s.anchor,
            carried_pages: s.carried_pages,
            components: components_json(&s.components),
        }
    }
}

/// A take of component files.
#[derive(Debug, Serialize)]
pub struct TakeJson {
    #[serde(flatten)]
    pub summary: SummaryJson,
    pub batches: usize,
    pub seconds: f64,
}

/// A take of a running VM, with the pause it cost.
#[derive(Debug, Serialize)]
pub struct CaptureJson {
    pub vm: String,
    /// `paused` or `live`.
    pub mode: &'static str,
    #[serde(flatten)]
    pub summary: SummaryJson,
    pub device_state_bytes: u64,
    pub downtime_ms: f64,
    pub device_state_ms: f64,
    pub measure_ms: f64,
    pub commit_ms: f64,
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl CaptureJson {
    pub fn new(vm: &str, r: &vmattest_qemu::capture::CaptureReport) -> CaptureJson {
        CaptureJson {
            vm: vm.to_owned(),
            mode: match r.mode {
                vmattest_qemu::Mode::Paused => "paused",
                vmattest_qemu::Mode::Live => "live",
            },
            summary: (&r.summary).into(),
            device_state_bytes: r.device_state_bytes,
            downtime_ms: ms(r.downtime),
            device_state_ms: ms(r.device_state),
            measure_ms: ms(r.measure),
            commit_ms: ms(r.commit),
        }
    }
}

impl fmt::Display for TakeJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        writeln!(
            f,
            "seq {}: {} of {} pages changed ({} now zero), {} bytes stored in {} batch(es){}, {:.2} s",
            s.seq,
            s.changed_pages,
            s.total_pages,
            s.zero_pages,
            s.stored_bytes,
            self.batches,
            s.anchor_note(),
            self.seconds
        )?;
        write!(f, "  link {}\n  state root {}", s.link, s.state_root)
    }
}

impl fmt::Display for CaptureJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        writeln!(
            f,
            "{} seq {} ({}): downtime {:.1} ms (device state {:.1} ms, {} bytes; measure {:.1} ms); {} of {} pages changed, {} bytes stored{}; commit {:.1} ms",
            self.vm,
            s.seq,
            self.mode,
            self.downtime_ms,
            self.device_state_ms,
            self.device_state_bytes,
            self.measure_ms,
            s.changed_pages,
            s.total_pages,
            s.stored_bytes,
            s.anchor_note(),
            self.commit_ms
        )?;
        write!(f, "  link {}\n  state root {}", s.link, s.state_root)
    }
}

/// A rollback of a running VM to a verified seq.
#[derive(Debug, Serialize)]
pub struct RollbackJson {
    #[serde(flatten)]
    pub verified: VerifiedJson,
    pub vm: String,
    pub rebuild_ms: f64,
    pub switch_ms: f64,
}

impl RollbackJson {
    pub fn new(vm: &str, r: &vmattest_qemu::restore::RestoreReport) -> RollbackJson {
        RollbackJson {
            verified: verified_json(&r.verified, None),
            vm: vm.to_owned(),
            rebuild_ms: ms(r.rebuild),
            switch_ms: ms(r.switch),
        }
    }
}

impl fmt::Display for RollbackJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.verified.seq;
        write!(
            f,
            "{} rolled back to seq {seq} (verified links 0 to {seq}; rebuild {:.0} ms, QEMU switch {:.0} ms); the guest runs on",
            self.vm, self.rebuild_ms, self.switch_ms
        )
    }
}

/// One link of a chain, as `snapshot log` lists it.
#[derive(Debug, Serialize)]
pub struct LinkJson {
    pub seq: u64,
    pub time: String,
    pub link: String,
    pub prev: String,
    pub delta: String,
    pub state_root: String,
    pub manifest: String,
    pub key_ids: Vec<String>,
    /// Whether its manifest is an anchor (`snapshot take --anchor`).
    pub anchor: bool,
    /// The keys that sign from the next link on, when this link rotates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rotates_to: Vec<String>,
    /// The keys allowed to revoke, which only a baseline announces.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revokers: Vec<String>,
}

impl From<&SignedLink> for LinkJson {
    fn from(l: &SignedLink) -> LinkJson {
        let v = l.value();
        LinkJson {
            seq: v.seq.0,
            time: v.time.to_string(),
            link: link_digest(l).to_hex(),
            prev: v.prev.to_hex(),
            delta: v.delta.to_hex(),
            state_root: v.state_root.to_hex(),
            manifest: v.manifest.to_hex(),
            key_ids: v.key_ids.iter().map(|k| k.to_hex()).collect(),
            anchor: false,
            rotates_to: v.announce.signers.iter().map(|k| k.id().to_hex()).collect(),
            revokers: v
                .announce
                .revokers
                .iter()
                .map(|k| k.id().to_hex())
                .collect(),
        }
    }
}

impl fmt::Display for LinkJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seq {:>4}  {}  link {}  state {}{}",
            self.seq,
            self.time,
            self.link,
            self.state_root,
            if self.anchor { "  anchor" } else { "" }
        )?;
        if !self.rotates_to.is_empty() {
            write!(f, "  rotates to {}", self.rotates_to.join(","))?;
        }
        if !self.revokers.is_empty() {
            write!(f, "  revokers {}", self.revokers.join(","))?;
        }
        Ok(())
    }
}

/// A bundle written by `snapshot export`.
#[derive(Debug, Serialize)]
pub struct ExportJson {
    pub out: String,
    pub links: u64,
    pub objects: u64,
    pub bytes: u64,
}

impl fmt::Display for ExportJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exported {} link(s), {} object(s), {} bytes to {}",
            self.links, self.objects, self.bytes, self.out
        )
    }
}

/// A prune by `snapshot prune`.
#[derive(Debug, Serialize)]
pub struct PruneJson {
    #[serde(flatten)]
    pub summary: vmattest_store::PruneSummary,
    pub seconds: f64,
}

impl fmt::Display for PruneJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        if s.folded == 0 {
            return write!(
                f,
                "nothing to fold: the chain holds seqs {} to {}",
                s.base, s.head
            );
        }
        write!(
            f,
            "folded {} seq(s) under a rebase at seq {}: the chain holds seqs {} to {}; \
             {} file(s), {} bytes removed, {} bytes of full state stored, in {:.2} s",
            s.folded,
            s.base,
            s.base,
            s.head,
            s.removed_files,
            s.removed_bytes,
            s.stored_bytes,
            self.seconds
        )
    }
}

/// A bundle imported by `snapshot import`.
#[derive(Debug, Serialize)]
pub struct ImportJson {
    pub first: u64,
    pub last: u64,
    pub new_links: u64,
    pub objects: u64,
    pub head: u64,
    pub link: String,
}

impl From<&ImportSummary> for ImportJson {
    fn from(r: &ImportSummary) -> ImportJson {
        ImportJson {
            first: r.first.0,
            last: r.last.0,
            new_links: r.new_links,
            objects: r.objects,
            head: r.verified.seq.0,
            link: r.verified.link.to_hex(),
        }
    }
}

impl fmt::Display for ImportJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "imported links {} to {} ({} new); head is seq {}",
            self.first, self.last, self.new_links, self.head
        )
    }
}

/// A proof of component pages at a seq (`snapshot prove`).
#[derive(Debug, Serialize)]
pub struct ChainProofJson {
    pub seq: u64,
    pub component: String,
    pub page: u64,
    pub count: u64,
    pub root: String,
    pub state_root: String,
    pub out: String,
}

impl fmt::Display for ChainProofJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "proof of {} pages {} to {} at seq {} under root {} -> {}",
            self.component,
            self.page,
            (self.page + self.count).saturating_sub(1),
            self.seq,
            self.root,
            self.out
        )
    }
}

/// A key pair written by `keygen`, or the public half `pubkey` wrote.
#[derive(Debug, Serialize)]
pub struct KeyJson {
    pub alg: &'static str,
    pub key_id: String,
    pub secret: Option<String>,
    pub public: Option<String>,
}

impl fmt::Display for KeyJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key {}", self.alg, self.key_id)?;
        if let Some(s) = &self.secret {
            write!(f, "\n  private {s} (mode 0600)")?;
        }
        if let Some(p) = &self.public {
            write!(f, "\n  public  {p}")?;
        }
        Ok(())
    }
}

/// A signed measurement record, as `sign` wrote it or `verify` checked it.
#[derive(Debug, Serialize)]
pub struct RecordJson {
    pub ok: bool,
    pub record: String,
    pub time: String,
    pub nonce: String,
    pub key_ids: Vec<String>,
    pub images: Vec<ImageJson>,
    pub images_checked: bool,
}

impl RecordJson {
    pub fn new(path: &Path, r: &MeasurementRecord, images_checked: bool) -> RecordJson {
        RecordJson {
            ok: true,
            record: path.display().to_string(),
            time: r.time.to_string(),
            nonce: hex::encode(&r.nonce),
            key_ids: r.key_ids.iter().map(|k| k.to_hex()).collect(),
            images: r.images.iter().map(ImageJson::from).collect(),
            images_checked,
        }
    }
}

/// A page proof of an image.
#[derive(Debug, Serialize)]
pub struct ProofJson {
    pub ok: bool,
    pub proof: String,
    pub alg: &'static str,
    pub root: String,
    pub first_page: u64,
    pub pages: u64,
    pub image_bytes: u64,
    pub siblings: usize,
}

impl ProofJson {
    pub fn new(path: &Path, p: &PageProof) -> ProofJson {
        ProofJson {
            ok: true,
            proof: path.display().to_string(),
            alg: p.params.alg().name(),
            root: p.root.to_hex(),
            first_page: p.first.0,
            pages: p.count,
            image_bytes: p.image_len,
            siblings: p.siblings.len() / p.params.alg().digest_len(),
        }
    }

    /// The last proven page.
    pub fn last_page(&self) -> u64 {
        (self.first_page + self.pages).saturating_sub(1)
    }
}

/// A configuration measured, signed and written by `config measure`.
#[derive(Debug, Serialize)]
pub struct ConfigMeasureJson {
    pub vm: String,
    pub root: String,
    pub count: usize,
    pub params: Vec<String>,
    pub key_ids: Vec<String>,
    pub opening: String,
    pub statement: String,
    /// With `--bind-pcr`: the quote file and the nonce it carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quote: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quote_nonce: Option<String>,
}

impl fmt::Display for ConfigMeasureJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "config root {} ({} params) of VM {}, signed by {}",
            self.root,
            self.count,
            self.vm,
            self.key_ids.join(", ")
        )?;
        writeln!(
            f,
            "  opening   {} (mode 0600: holds every salt, keep it private)",
            self.opening
        )?;
        write!(f, "  statement {}", self.statement)?;
        if let (Some(q), Some(n)) = (&self.quote, &self.quote_nonce) {
            write!(
                f,
                "\n  quote     {q} (verify: vmattest tpm verify-quote {q} --ak AK --nonce {n})"
            )?;
        }
        Ok(())
    }
}

/// One configuration parameter and its value.
#[derive(Debug, Serialize)]
pub struct ParamJson {
    pub name: String,
    pub value: String,
}

/// A measurement directory, as `config show` prints it.
#[derive(Debug, Serialize)]
pub struct ConfigJson {
    pub vm: String,
    pub root: String,
    pub count: usize,
    pub time: String,
    pub key_ids: Vec<String>,
    pub params: Vec<ParamJson>,
}

impl fmt::Display for ConfigJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VM {}: config root {} ({} params), signed at {} by {}",
            self.vm,
            self.root,
            self.count,
            self.time,
            self.key_ids.join(", ")
        )?;
        for p in &self.params {
            write!(f, "\n  {} = {}", p.name, p.value)?;
        }
        Ok(())
    }
}

/// One parameter proven under a signed configuration root (`config verify-disclosure`).
#[derive(Debug, Serialize)]
pub struct DisclosedJson {
    pub ok: bool,
    pub name: String,
    pub value: String,
    pub vm: String,
    pub root: String,
    pub count: u64,
    pub time: String,
    pub signers: Vec<String>,
}

impl fmt::Display for DisclosedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {}\n  root {} ({} params) of VM {} at {}, signed by {}",
            self.name,
            self.value,
            self.root,
            self.count,
            self.vm,
            self.time,
            self.signers.join(", ")
        )
    }
}

impl DisclosedJson {
    pub fn new(
        param: &vmattest_core::config::ConfigParam,
        statement: &vmattest_core::config::SignedConfigStatement,
    ) -> DisclosedJson {
        let s = statement.value();
        DisclosedJson {
            ok: true,
            name: param.name.clone(),
            value: param.value.clone(),
            vm: s.vm.clone(),
            root: s.root.to_hex(),
            count: s.count.into(),
            time: s.time.to_string(),
            signers: s.key_ids.iter().map(|k| k.to_hex()).collect(),
        }
    }
}

/// One component of a snapshot report: the digest in the snapshot and the one found.
#[derive(Debug, Serialize)]
pub struct CheckJson {
    pub name: String,
    pub expected: String,
    pub found: String,
    pub matches: bool,
}

/// A signed comparison of a running VM with a seq of its chain (`attest snapshot`).
#[derive(Debug, Serialize)]
pub struct SnapshotReportJson {
    pub vm: String,
    pub seq: u64,
    pub link: String,
    pub verdict: &'static str,
    pub components: Vec<CheckJson>,
    pub out: Option<String>,
    pub report_id: Option<i64>,
    /// The verdict the server stored with the report.
    #[serde(skip)]
    pub server_verdict: Option<String>,
}

impl SnapshotReportJson {
    pub fn new(
        r: &vmattest_core::attest::SnapshotReport,
        out: Option<&Path>,
        receipt: Option<&vmattest_api::ReportReceipt>,
    ) -> SnapshotReportJson {
        SnapshotReportJson {
            vm: r.vm.clone(),
            seq: r.seq.0,
            link: r.link.to_hex(),
            verdict: r.verdict(),
            components: r
                .components
                .iter()
                .map(|c| CheckJson {
                    name: c.name.clone(),
                    expected: c.expected.to_hex(),
                    found: c.found.to_hex(),
                    matches: c.matches(),
                })
                .collect(),
            out: out.map(|p| p.display().to_string()),
            report_id: receipt.map(|x| x.id),
            server_verdict: receipt.map(|x| x.verdict.clone()),
        }
    }

    /// The names of the components that differ.
    pub fn differs(&self) -> Vec<String> {
        let differ = self.components.iter().filter(|c| !c.matches);
        differ.map(|c| c.name.clone()).collect()
    }
}

impl fmt::Display for SnapshotReportJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.components {
            if c.matches {
                writeln!(f, "Match     {}  {}", c.name, c.found)?;
            } else {
                writeln!(
                    f,
                    "Mismatch  {}  found {}, snapshot has {}",
                    c.name, c.found, c.expected
                )?;
            }
        }
        write!(
            f,
            "{}: {} with seq {} (link {}); device state not compared",
            self.vm, self.verdict, self.seq, self.link
        )?;
        if let (Some(id), Some(v)) = (self.report_id, &self.server_verdict) {
            write!(f, "\n  report {id} stored by the server ({v})")?;
        }
        Ok(())
    }
}

/// A VM started by `vm start` or `vm launch`.
#[derive(Debug, Serialize)]
pub struct StartedJson {
    pub vm: String,
    pub pid: i32,
    pub accel: String,
    pub seconds: f64,
    pub console: String,
}

impl StartedJson {
    pub fn new(spec: &vmattest_qemu::VmSpec, s: &crate::vm::Started) -> StartedJson {
        StartedJson {
            vm: spec.name().to_owned(),
            pid: s.pid,
            accel: spec.effective_accel().to_string(),
            seconds: s.elapsed.as_secs_f64(),
            console: spec.console_path().display().to_string(),
        }
    }
}

impl fmt::Display for StartedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "started {} (pid {}, {}) in {:.2} s; console {}",
            self.vm, self.pid, self.accel, self.seconds, self.console
        )
    }
}

/// A VM launched by `vm launch` after its configuration matched the reference.
#[derive(Debug, Serialize)]
pub struct LaunchJson {
    #[serde(flatten)]
    pub started: StartedJson,
    pub root: String,
    pub count: usize,
    /// "local" or "server".
    pub checked: &'static str,
}

impl LaunchJson {
    pub fn new(spec: &vmattest_qemu::VmSpec, l: &crate::launch::Launched) -> LaunchJson {
        LaunchJson {
            started: StartedJson::new(spec, &l.started),
            root: l.measurement.root(),
            count: l.measurement.opening.len(),
            checked: l.checked_by,
        }
    }
}

impl fmt::Display for LaunchJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = if self.checked == "local" {
            "local"
        } else {
            "server's"
        };
        writeln!(
            f,
            "config root {} ({} params) matches the {whose} reference",
            self.root, self.count
        )?;
        write!(f, "{}", self.started)
    }
}
