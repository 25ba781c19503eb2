//! How a person reads the API's records: one line each (a policy and a VM take a few), so that
//! every front end lists them alike. JSON output uses the serde form instead.

use std::fmt;

use crate::{
    Alert, AttestationResult, EarKey, Health, Host, PolicyInfo, SnapshotRequest, StoredReport,
    TokenInfo, Vm,
};

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Health {
            status,
            version,
            database,
        } = self;
        write!(f, "{status} (version {version}, database {database})")
    }
}

impl fmt::Display for TokenInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.id, self.role.name())?;
        if let Some(h) = &self.host {
            write!(f, " host {h}")?;
        }
        write!(f, " created {}", self.created)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tpm = if self.tpm_backed { "  (TPM)" } else { "" };
        write!(f, "{}  key {}{tpm}", self.name, self.key_id)
    }
}

impl fmt::Display for PolicyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "# policy {} ({})\n{}",
            self.name,
            self.id,
            self.toml.trim_end()
        )
    }
}

impl fmt::Display for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "vm {} on host {}", self.name, self.host)?;
        writeln!(f, "  policy {}", self.policy_id)?;
        writeln!(f, "  subsets {}", self.approved_subsets.join(", "))?;
        let webhook = if self.has_webhook { "yes" } else { "no" };
        let action = match self.on_alert {
            crate::AlertAction::None => "none",
            crate::AlertAction::Rollback => "rollback",
        };
        writeln!(
            f,
            "  threshold {}, on alert {action}, webhook {webhook}",
            self.threshold
        )?;
        match &self.baseline {
            None => write!(f, "  baseline none"),
            Some(b) => {
                let p = &b.provenance;
                write!(
                    f,
                    "  baseline {} from {} seq {} (link {})",
                    b.id, p.store_vm_id, p.seq, p.link_digest
                )
            }
        }
    }
}

impl AttestationResult {
    /// `N/M region(s) matched`, and the names of those that differ.
    pub fn regions_line(&self) -> String {
        let matched = self.regions.iter().filter(|r| r.matched).count();
        let mut out = format!("{matched}/{} region(s) matched", self.regions.len());
        let differ: Vec<String> = self
            .regions
            .iter()
            .filter(|r| !r.matched)
            .map(|r| match &r.detail {
                Some(d) => format!("{} [{d}]", r.name),
                None => r.name.clone(),
            })
            .collect();
        if !differ.is_empty() {
            out += &format!(" (differ: {})", differ.join(", "));
        }
        out
    }
}

impl fmt::Display for AttestationResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  {}  {}  score {:>3} ({}), {}",
            self.id,
            self.time,
            self.vm,
            self.score,
            self.status,
            self.regions_line()
        )?;
        if self.alert {
            f.write_str("  ALERT")?;
        }
        Ok(())
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  {}  {}  {}  x{}  last {}  score {:>3} ({})",
            self.id,
            self.time,
            self.vm,
            self.state.name(),
            self.count,
            self.last_time,
            self.score,
            self.status
        )?;
        if self.webhook {
            let delivered = if self.webhook_delivered { "" } else { "not " };
            write!(f, "  webhook {delivered}delivered")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl fmt::Display for StoredReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  {}  {}  seq {}  {}",
            self.id, self.time, self.vm, self.seq, self.verdict
        )
    }
}

impl fmt::Display for SnapshotRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}  {}  seq {}  ", self.id, self.requested, self.seq)?;
        match self.report_id {
            Some(id) => write!(f, "report {id}"),
            None => f.write_str("pending"),
        }
    }
}

impl fmt::Display for EarKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "# {} key {}\n{}",
            self.alg,
            self.kid,
            self.public_key_pem.trim_end()
        )
    }
}
