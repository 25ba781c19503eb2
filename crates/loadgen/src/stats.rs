//! Latency samples, percentiles and the run's report.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// The nearest-rank `p`-th percentile (0-100) of ascending `sorted`.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (p.clamp(0.0, 100.0) / 100.0 * n as f64).ceil();
    // rank is a whole number within 0..=n: the conversion is exact.
    #[allow(clippy::cast_possible_truncation)]
    let rank = if rank <= 1.0 {
        1
    } else {
        (rank as usize).min(n)
    };
    sorted.get(rank - 1).copied()
}

/// What one simulated agent measured.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub ok: u64,
    /// Microseconds of each successful evidence POST.
    pub evidence_us: Vec<u64>,
    /// Microseconds of each successful challenge + evidence round.
    pub round_us: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl AgentStats {
    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    pub fn merge(&mut self, other: AgentStats) {
        self.ok += other.ok;
        self.evidence_us.extend(other.evidence_us);
        self.round_us.extend(other.round_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut us: Vec<u64>) -> Latency {
        us.sort_unstable();
        let ms = |v: Option<u64>| v.map_or(0.0, |v| v as f64 / 1000.0);
        Latency {
            count: us.len(),
            p50_ms: ms(percentile(&us, 50.0)),
            p99_ms: ms(percentile(&us, 99.0)),
            max_ms: ms(us.last().copied()),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub server: String,
    pub database: String,
    pub agents: usize,
    pub setup_s: f64,
    pub duration_s: f64,
    pub requests: u64,
    pub evidence_ok: u64,
    pub evidence_per_s: f64,
    pub evidence_latency: Latency,
    pub round_latency: Latency,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    pub fn new(
        server: String,
        database: String,
        agents: usize,
        setup: Duration,
        elapsed: Duration,
        stats: AgentStats,
    ) -> Report {
        let errors_total: u64 = stats.errors.values().sum();
        let secs = elapsed.as_secs_f64();
        Report {
            server,
            database,
            agents,
            setup_s: setup.as_secs_f64(),
            duration_s: secs,
            requests: stats.ok + errors_total,
            evidence_ok: stats.ok,
            evidence_per_s: if secs > 0.0 {
                stats.ok as f64 / secs
            } else {
                0.0
            },
            evidence_latency: Latency::of(stats.evidence_us),
            round_latency: Latency::of(stats.round_us),
            errors_total,
            errors: stats.errors,
        }
    }

    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "server {} (database {}), {} agents, setup {:.2} s",
            self.server, self.database, self.agents, self.setup_s
        );
        let _ = writeln!(
            s,
            "{} rounds in {:.2} s: {} evidence accepted, {:.1} evidence/s",
            self.requests, self.duration_s, self.evidence_ok, self.evidence_per_s
        );
        let _ = writeln!(
            s,
            "{:<28} {:>10} {:>10} {:>10}",
            "latency (ms)", "p50", "p99", "max"
        );
        for (name, l) in [
            ("POST /v1/evidence", &self.evidence_latency),
            ("challenge + evidence", &self.round_latency),
        ] {
            let _ = writeln!(
                s,
                "{name:<28} {:>10.3} {:>10.3} {:>10.3}",
                l.p50_ms, l.p99_ms, l.max_ms
            );
        }
        let _ = writeln!(s, "errors: {}", self.errors_total);
        for (kind, n) in &self.errors {
            let _ = writeln!(s, "  {kind:<40} {n:>10}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[5], 0.0), Some(5));
        assert_eq!(percentile(&[5], 99.0), Some(5));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 150.0), Some(100));
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&v, 50.0), Some(5));
        assert_eq!(percentile(&v, 99.0), Some(10));
        assert_eq!(percentile(&v, 95.0), Some(10));
        assert_eq!(percentile(&v, 90.0), Some(9));
    }

    #[test]
    fn latency_sorts_and_converts_to_ms() {
        let l = Latency::of(vec![3000, 1000, 2000, 100_000]);
        assert_eq!(l.count, 4);
        assert_eq!(l.p50_ms, 2.0);
        assert_eq!(l.p99_ms, 100.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(Latency::of(Vec::new()).max_ms, 0.0);
    }

    #[test]
    fn merged_stats_make_a_report() {
        let mut a = AgentStats {
            ok: 2,
            evidence_us: vec![1000, 2000],
            round_us: vec![1500, 2500],
            ..AgentStats::default()
        };
        a.error("http 409 no_baseline");
        let mut b = AgentStats {
            ok: 2,
            evidence_us: vec![3000, 4000],
            round_us: vec![3500, 4500],
            ..AgentStats::default()
        };
        b.error("http 409 no_baseline");
        b.error("timeout");
        a.merge(b);
        let r = Report::new(
            "http://127.0.0.1:1".into(),
            "sqlite".into(),
            2,
            Duration::from_millis(10),
            Duration::from_secs(2),
            a,
        );
        assert_eq!(r.evidence_ok, 4);
        assert_eq!(r.requests, 7);
        assert_eq!(r.errors_total, 3);
        assert_eq!(r.errors["http 409 no_baseline"], 2);
        assert_eq!(r.evidence_per_s, 2.0);
        assert_eq!(r.evidence_latency.max_ms, 4.0);
        assert_eq!(r.round_latency.p50_ms, 2.5);
        let table = r.table();
        assert!(table.contains("2.0 evidence/s"), "{table}");
        assert!(table.contains("timeout"), "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["evidence_latency"]["p99_ms"], 4.0);
    }
}
