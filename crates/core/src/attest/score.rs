//! Appraisal: per-region outcomes to an AR4SI trust vector, a 0-100 score and a status.
//!
//! Tiers follow draft-ietf-rats-ar4si: 0 no claim, 2-31 affirming, 32-95 warning, 96-127
//! contraindicated. Kernel-code regions speak to `executables`; other regions (tables and
//! data the policy pins) to `configuration`.

use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    None,
    Affirming,
    Warning,
    Contraindicated,
}

impl Status {
    pub fn of_claim(v: i8) -> Status {
        match v {
            2..=31 => Status::Affirming,
            32..=95 => Status::Warning,
            96..=127 => Status::Contraindicated,
            _ => Status::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Affirming => "affirming",
            Status::Warning => "warning",
            Status::Contraindicated => "contraindicated",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The AR4SI trustworthiness vector; 0 means no claim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrustVector {
    pub instance_identity: i8,
    pub configuration: i8,
    pub executables: i8,
    pub file_system: i8,
    pub hardware: i8,
    pub runtime_opaque: i8,
    pub storage_opaque: i8,
    pub sourced_data: i8,
}

impl TrustVector {
    /// `(claim name as in the EAR draft, value)`, in the draft's order.
    pub fn claims(&self) -> [(&'static str, i8); 8] {
        [
            ("instance-identity", self.instance_identity),
            ("configuration", self.configuration),
            ("executables", self.executables),
            ("file-system", self.file_system),
            ("hardware", self.hardware),
            ("runtime-opaque", self.runtime_opaque),
            ("storage-opaque", self.storage_opaque),
            ("sourced-data", self.sourced_data),
        ]
    }

    /// The worst tier among the claims made.
    pub fn status(&self) -> Status {
        self.claims()
            .iter()
            .map(|(_, v)| Status::of_claim(*v))
            .max()
            .unwrap_or(Status::None)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionOutcome {
    pub name: String,
    pub weight: u32,
    pub critical: bool,
    pub kernel_code: bool,
    pub matched: bool,
    /// Why it did not match, where that is known.
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appraisal {
    pub vector: TrustVector,
    pub score: u8,
    pub status: Status,
}

/// AR4SI codes used here.
pub mod code {
    pub const TRUSTWORTHY_INSTANCE: i8 = 2;
    pub const APPROVED_CONFIG: i8 = 2;
    pub const UNSAFE_CONFIG: i8 = 32;
    pub const CONTRAINDICATED_CONFIG: i8 = 96;
    pub const APPROVED_RUNTIME: i8 = 2;
    pub const UNRECOGNIZED_RUNTIME: i8 = 33;
    pub const CONTRAINDICATED_RUNTIME: i8 = 96;
    pub const GENUINE_HARDWARE: i8 = 2;
}

/// Score = matched weight / total weight, as a percentage rounded down; 0 when a critical
/// region differs.
pub fn appraise(outcomes: &[RegionOutcome], hardware_backed: bool) -> Appraisal {
    let total: u64 = outcomes.iter().map(|o| u64::from(o.weight)).sum();
    let matched: u64 = outcomes
        .iter()
        .filter(|o| o.matched)
        .map(|o| u64::from(o.weight))
        .sum();
    let critical_miss = outcomes.iter().any(|o| o.critical && !o.matched);
    let score = if critical_miss || total == 0 {
        0
    } else {
        u8::try_from(matched * 100 / total).unwrap_or(100)
    };
    let tier = |kernel: bool| {
        let of_kind: Vec<&RegionOutcome> = outcomes
            .iter()
            .filter(|o| o.kernel_code == kernel)
            .collect();
        if of_kind.is_empty() {
            None
        } else if of_kind.iter().all(|o| o.matched) {
            Some(Status::Affirming)
        } else if of_kind.iter().any(|o| o.critical && !o.matched) {
            Some(Status::Contraindicated)
        } else {
            Some(Status::Warning)
        }
    };
    let executables = match tier(true) {
        Some(Status::Affirming) => code::APPROVED_RUNTIME,
        Some(Status::Warning) => code::UNRECOGNIZED_RUNTIME,
        Some(_) => code::CONTRAINDICATED_RUNTIME,
        None => 0,
    };
    let configuration = match tier(false) {
        Some(Status::Affirming) => code::APPROVED_CONFIG,
        Some(Status::Warning) => code::UNSAFE_CONFIG,
        Some(_) => code::CONTRAINDICATED_CONFIG,
        None => 0,
    };
    let vector = TrustVector {
        instance_identity: code::TRUSTWORTHY_INSTANCE,
        configuration,
        executables,
        hardware: if hardware_backed {
            code::GENUINE_HARDWARE
        } else {
            0
        },
        ..TrustVector::default()
    };
    Appraisal {
        vector,
        score,
        status: vector.status(),
    }
}
