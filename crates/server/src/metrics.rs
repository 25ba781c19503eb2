//! Prometheus metrics in the text exposition format, from plain atomics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vmattest_api::{AttestationResult, ConfigCheckResult};

use crate::error::ApiError;

/// Upper bounds of the evidence latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Default)]
pub struct Metrics {
    challenges: AtomicU64,
    alerts: AtomicU64,
    webhook_ok: AtomicU64,
    webhook_failed: AtomicU64,
    reports: AtomicU64,
    config_checks: Mutex<BTreeMap<String, u64>>,
    by_status: Mutex<BTreeMap<String, u64>>,
    refused: Mutex<BTreeMap<String, u64>>,
    http: Mutex<BTreeMap<u16, u64>>,
    connections_closed: Mutex<BTreeMap<&'static str, u64>>,
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    /// Per VM: the last result this instance appraised (time, score, EAR status).
    vms: Mutex<BTreeMap<String, (i64, u8, &'static str)>>,
}

/// EAR statuses, each a series of `vmattest_vm_status` so that a change leaves no stale one.
const STATUSES: [&str; 4] = ["affirming", "warning", "contraindicated", "none"];

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    if let Ok(mut m) = m.lock() {
        *m.entry(k).or_insert(0) += 1;
    }
}

impl Metrics {
    pub fn challenge(&self) {
        self.challenges.fetch_add(1, Ordering::Relaxed);
    }

    pub fn alert(&self) {
        self.alerts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self) {
        self.reports.fetch_add(1, Ordering::Relaxed);
    }

    /// A configuration check: `match`, `mismatch`, or the refusal's code.
    pub fn config_check(&self, out: &Result<ConfigCheckResult, ApiError>) {
        let outcome = match out {
            Ok(r) if r.ok => "match",
            Ok(_) => "mismatch",
            Err(e) => e.code.as_str(),
        };
        bump(&self.config_checks, outcome.to_owned());
    }

    pub fn webhook(&self, ok: bool) {
        let c = if ok {
            &self.webhook_ok
        } else {
            &self.webhook_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn vm_result(&self, vm: &str, time: i64, score: u8, status: &'static str) {
        if let Ok(mut m) = self.vms.lock() {
            match m.get_mut(vm) {
                Some(slot) => *slot = (time, score, status),
                None => {
                    m.insert(vm.to_owned(), (time, score, status));
                }
            }
        }
    }

    pub fn http(&self, status: u16) {
        bump(&self.http, status);
    }

    /// A connection refused over a cap or closed by a timeout; `why` names which.
    pub fn connection_closed(&self, why: &'static str) {
        bump(&self.connections_closed, why);
    }

    pub fn evidence(&self, out: &Result<AttestationResult, ApiError>, took: Duration) {
        match out {
            Ok(r) => bump(&self.by_status, r.status.clone()),
            Err(e) => bump(&self.refused, e.code.to_string()),
        }
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The exposition; `active` holds each VM's active alerts (unacknowledged, acknowledged).
    pub fn render(&self, active: &[(String, i64, i64)]) -> String {
        let mut s = String::new();
        self.render_vms(&mut s, active);
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut s,
            "vmattest_challenges_total",
            "Nonces issued.",
            self.challenges.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "vmattest_alerts_total",
            "Alerts raised.",
            self.alerts.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "vmattest_reports_total",
            "Snapshot reports stored.",
            self.reports.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP vmattest_webhooks_total Webhook delivery attempts.\n# TYPE vmattest_webhooks_total counter"
        );
        let _ = writeln!(
            s,
            "vmattest_webhooks_total{{outcome=\"delivered\"}} {}",
            self.webhook_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "vmattest_webhooks_total{{outcome=\"failed\"}} {}",
            self.webhook_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP vmattest_evidence_total Evidence appraised, by EAR status.\n# TYPE vmattest_evidence_total counter"
        );
        if let Ok(m) = self.by_status.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(s, "vmattest_evidence_total{{status=\"{k}\"}} {v}");
            }
        }
        let _ = writeln!(
            s,
            "# HELP vmattest_evidence_refused_total Evidence refused, by error code.\n# TYPE vmattest_evidence_refused_total counter"
        );
        if let Ok(m) = self.refused.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(s, "vmattest_evidence_refused_total{{code=\"{k}\"}} {v}");
            }
        }
        let _ = writeln!(
            s,
            "# HELP vmattest_config_checks_total Configuration checks against a reference, by outcome.\n# TYPE vmattest_config_checks_total counter"
        );
        if let Ok(m) = self.config_checks.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(s, "vmattest_config_checks_total{{outcome=\"{k}\"}} {v}");
            }
        }
        let _ = writeln!(
            s,
            "# HELP vmattest_http_responses_total HTTP responses, by status.\n# TYPE vmattest_http_responses_total counter"
        );
        if let Ok(m) = self.http.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(s, "vmattest_http_responses_total{{status=\"{k}\"}} {v}");
            }
        }
        let _ = writeln!(
            s,
            "# HELP vmattest_connections_closed_total Connections refused over a cap or closed by a timeout, by reason.\n# TYPE vmattest_connections_closed_total counter"
        );
        if let Ok(m) = self.connections_closed.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(s, "vmattest_connections_closed_total{{reason=\"{k}\"}} {v}");
            }
        }
        let _ = writeln!(
            s,
            "# HELP vmattest_evidence_seconds Evidence handling time.\n# TYPE vmattest_evidence_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.latency[i].load(Ordering::Relaxed);
            let _ = writeln!(
                s,
                "vmattest_evidence_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        cumulative += self.latency[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "vmattest_evidence_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            s,
            "vmattest_evidence_seconds_sum {sum}\nvmattest_evidence_seconds_count {cumulative}"
        );
        s
    }

    fn render_vms(&self, s: &mut String, active: &[(String, i64, i64)]) {
        let Ok(vms) = self.vms.lock() else { return };
        let gauge = |s: &mut String, name: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
        };
        gauge(
            s,
            "vmattest_vm_last_attested_timestamp_seconds",
            "When this server last appraised the VM's evidence.",
        );
        for (vm, (time, _, _)) in vms.iter() {
            let _ = writeln!(
                s,
                "vmattest_vm_last_attested_timestamp_seconds{{vm=\"{vm}\"}} {time}"
            );
        }
        gauge(s, "vmattest_vm_score", "The VM's last trust score (0-100).");
        for (vm, (_, score, _)) in vms.iter() {
            let _ = writeln!(s, "vmattest_vm_score{{vm=\"{vm}\"}} {score}");
        }
        gauge(
            s,
            "vmattest_vm_status",
            "1 for the EAR status of the VM's last result, 0 for the others.",
        );
        for (vm, (_, _, status)) in vms.iter() {
            for st in STATUSES {
                let on = u8::from(st == *status);
                let _ = writeln!(s, "vmattest_vm_status{{vm=\"{vm}\",status=\"{st}\"}} {on}");
            }
        }
        gauge(
            s,
            "vmattest_vm_alerts",
            "The VM's active alerts, by state (open or acknowledged).",
        );
        let mut seen: BTreeMap<&str, (i64, i64)> =
            vms.keys().map(|vm| (vm.as_str(), (0, 0))).collect();
        for (vm, open, acked) in active {
            seen.insert(vm.as_str(), (*open, *acked));
        }
        for (vm, (open, acked)) in seen {
            let _ = writeln!(
                s,
                "vmattest_vm_alerts{{vm=\"{vm}\",state=\"open\"}} {open}\nvmattest_vm_alerts{{vm=\"{vm}\",state=\"acknowledged\"}} {acked}"
            );
        }
    }
}
