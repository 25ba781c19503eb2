//! What workflows did, as the JSON every front end prints: one shape per kind of result, so
//! that the command line, the agent and a host daemon report alike (docs/ERRORS.md for errors).

use serde::Serialize;
use vmattest_core::chain::ComponentRoot;
use vmattest_core::record::ImageMeasurement;
use vmattest_store::{TakeSummary, Verified};

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
    pub seq: u64,
    pub link: String,
    pub state_root: String,
    pub time: String,
    pub components: Vec<ComponentJson>,
    /// Where the components were written, if anywhere.
    pub out: Option<String>,
}

pub fn verified_json(v: &Verified, out: Option<&std::path::Path>) -> VerifiedJson {
    VerifiedJson {
        ok: true,
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
    pub components: Vec<ComponentJson>,
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
            summary: (&r.summary).into(),
            device_state_bytes: r.device_state_bytes,
            downtime_ms: ms(r.downtime),
            device_state_ms: ms(r.device_state),
            measure_ms: ms(r.measure),
            commit_ms: ms(r.commit),
        }
    }
}
