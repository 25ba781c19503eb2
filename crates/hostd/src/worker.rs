//! One VM's worker: attestation rounds on the policy's schedule (or the configured interval),
//! the server's rollback actions and snapshot requests, and scheduled snapshots into the VM's
//! store. It checks its stop flag only between operations, so a stop lets a running capture
//! finish; a crash mid-capture is covered by the capture's own guardian, which resumes the
//! guest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vmattest_agent::Guest;
use vmattest_agent::run::{
    DEFAULT_INTERVAL, Event, Rollback, answer_challenge, answer_snapshot_requests, roll_back,
};
use vmattest_client::Client;
use vmattest_host::Verifier;
use vmattest_qemu::VmSpec;
use vmattest_sign::Signer;
use vmattest_store::StoreSecret;

use crate::config::{GuestConf, SnapshotConf, Target};
use crate::status::{Attested, Board, Failure, Pruned, Snapshotted};

/// What every worker shares.
#[derive(Debug)]
pub struct Shared {
    pub client: Client,
    pub evidence: Arc<dyn Signer>,
    pub board: Arc<Board>,
    /// Rounds in flight at once (`server.concurrency`).
    pub rounds: Permits,
}

/// A counting semaphore: at most `n` holders at once.
#[derive(Debug)]
pub struct Permits {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Permits {
    pub fn new(n: usize) -> Permits {
        Permits {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self) -> Permit<'_> {
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *free -= 1;
        Permit(self)
    }
}

struct Permit<'a>(&'a Permits);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut free = self
            .0
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *free += 1;
        self.0.freed.notify_one();
    }
}

/// The chain a worker snapshots into and rolls back from.
struct Chain {
    signers: Vec<Box<dyn Signer>>,
    rotate: Vec<Box<dyn Signer>>,
    verifier: Verifier,
    secret: Option<StoreSecret>,
}

type Signers<'a> = Vec<&'a dyn Signer>;

impl Chain {
    /// Who signs the next link and who it rotates to: the configured keys until the chain
    /// has rotated to `rotate_keys`, then those alone.
    fn signing(&self, store: &std::path::Path) -> Result<(Signers<'_>, Signers<'_>), String> {
        let keys: Vec<&dyn Signer> = self.signers.iter().map(AsRef::as_ref).collect();
        let rotate: Vec<&dyn Signer> = self.rotate.iter().map(AsRef::as_ref).collect();
        if rotate.is_empty() {
            return Ok((keys, rotate));
        }
        let in_force = vmattest_store::Store::open(store)
            .and_then(|s| s.keys_in_force())
            .map_err(|e| e.to_string())?;
        let mut want: Vec<_> = rotate.iter().map(|k| k.key_id()).collect();
        want.sort();
        let rotated = in_force.is_some_and(|mut ids| {
            ids.sort();
            ids == want
        });
        Ok(if rotated {
            (rotate, Vec::new())
        } else {
            (keys, rotate)
        })
    }
}

fn open_chain(name: &str, s: &SnapshotConf) -> Result<Chain, String> {
    if s.tpm && s.pubkeys.is_empty() {
        return Err(
            "snapshots: tpm = true needs pubkeys (the TPM key's public key) for rollback".into(),
        );
    }
    let signers = vmattest_host::keys::signers(&s.keys, s.tpm).map_err(|e| e.to_string())?;
    let rotate = s
        .rotate_keys
        .iter()
        .map(|k| {
            vmattest_host::keys::read_secret(k)
                .map(|k| Box::new(k) as Box<dyn Signer>)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pubkeys = if s.pubkeys.is_empty() {
        s.keys
            .iter()
            .map(|k| vmattest_host::keys::public_path(k))
            .collect()
    } else {
        s.pubkeys.clone()
    };
    if vmattest_store::Store::open(&s.store).is_err() {
        let params = vmattest_host::record::tree_params(&s.alg, "").map_err(|e| e.to_string())?;
        vmattest_host::chain::init(
            &s.store,
            name.to_owned(),
            &params,
            "default".into(),
            s.secret.as_deref(),
            vmattest_host::chain::Layout {
                head_cache: s.head_cache,
                anchor_every: s.anchor_every,
            },
        )
        .map_err(|e| e.to_string())?;
        tracing::info!(vm = name, store = %s.store.display(), "store created");
    }
    let verifier = Verifier::load(&pubkeys, s.secret.as_deref()).map_err(|e| e.to_string())?;
    let secret = s
        .secret
        .as_deref()
        .map(vmattest_host::tpm::load_secret)
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(Chain {
        signers,
        rotate,
        verifier,
        secret,
    })
}

pub fn label(g: &GuestConf) -> String {
    match g {
        GuestConf::Spec(p) => format!("spec {}", p.display()),
        GuestConf::Domain { name, .. } => format!("domain {name}"),
    }
}

struct Ctx<'a> {
    target: &'a Target,
    shared: &'a Shared,
    label: String,
}

impl Ctx<'_> {
    fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        let error = error.to_string();
        tracing::warn!(vm = %self.target.name, what, %error, "failed");
        self.shared
            .board
            .update(&self.target.name, &self.label, |s| {
                s.last_error = Some(Failure {
                    time: vmattest_host::now(),
                    what: what.to_owned(),
                    error,
                });
            });
    }

    fn event(&self, event: Event) {
        let name = &self.target.name;
        match event {
            Event::RolledBack { seq, report, .. } => {
                tracing::warn!(vm = %name, seq, switch_ms = u64::try_from(report.switch.as_millis()).unwrap_or(u64::MAX), "rolled back");
                self.shared
                    .board
                    .update(name, &self.label, |s| s.last_rollback_seq = Some(seq));
            }
            Event::Reported {
                request,
                seq,
                verdict,
                ..
            } => {
                tracing::info!(vm = %name, request, seq, %verdict, "snapshot request answered");
            }
            Event::RollbackSkipped { seq, .. } => {
                self.failed(
                    "rollback",
                    &format!("asked to roll back to seq {seq}, but no snapshots are configured"),
                );
            }
            Event::Failed { error, .. } => self.failed("report", &error),
            Event::LocateFailed { error, .. } => self.failed("locate", &error),
            Event::Answered { .. } => {}
        }
    }
}

/// Sleeps until `until` or until `stop` is set.
fn wait(stop: &AtomicBool, until: Instant) {
    while !stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Runs until `stop` is set.
pub fn run(target: &Target, shared: &Shared, stop: &AtomicBool) {
    let ctx = Ctx {
        target,
        shared,
        label: label(&target.guest),
    };
    let spec: Option<VmSpec> = match &target.guest {
        GuestConf::Spec(path) => match vmattest_host::vm::load_spec(&path.to_string_lossy()) {
            Ok(s) => Some(s),
            Err(e) => return ctx.failed("start", &e),
        },
        GuestConf::Domain { .. } => None,
    };
    let guest = match (&target.guest, &spec) {
        (_, Some(spec)) => Guest::Spec(spec),
        (GuestConf::Domain { name, uri }, None) => Guest::Domain {
            name,
            uri: uri.as_deref(),
        },
        (GuestConf::Spec(_), None) => return,
    };
    let chain = match &target.snapshots {
        Some(s) => match open_chain(&target.name, s) {
            Ok(c) => Some((s, c)),
            Err(e) => return ctx.failed("start", &e),
        },
        None => None,
    };
    tracing::info!(vm = %target.name, guest = %ctx.label, snapshots = chain.is_some(), "worker started");
    let rollback = chain.as_ref().map(|(s, c)| Rollback {
        store: &s.store,
        verifier: &c.verifier,
    });
    let mut next_attest = Instant::now();
    // A new store gets its baseline at once; an existing chain continues after one interval.
    let mut next_snapshot = chain.as_ref().map(|(s, _)| {
        let empty = vmattest_store::Store::open(&s.store)
            .and_then(|st| st.head())
            .map(|h| h.is_none())
            .unwrap_or(true);
        if empty {
            Instant::now()
        } else {
            Instant::now() + Duration::from_secs(s.interval_secs)
        }
    });
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() >= next_attest {
            round += 1;
            let started = Instant::now();
            let schedule = attest(&ctx, &guest, rollback.as_ref(), round);
            next_attest = started + target.attest_interval.unwrap_or(schedule);
        }
        if let (Some((s, c)), Some(at)) = (&chain, next_snapshot)
            && Instant::now() >= at
            && !stop.load(Ordering::SeqCst)
        {
            let started = Instant::now();
            snapshot(&ctx, &guest, s, c);
            next_snapshot = Some(started + Duration::from_secs(s.interval_secs));
        }
        let until = next_snapshot.map_or(next_attest, |s| s.min(next_attest));
        wait(stop, until);
    }
    tracing::info!(vm = %target.name, rounds = round, "worker stopped");
}

/// One round; returns the policy's schedule (or the default before any policy was seen).
fn attest(
    ctx: &Ctx<'_>,
    guest: &Guest<'_>,
    rollback: Option<&Rollback<'_>>,
    round: u64,
) -> Duration {
    let t = ctx.target;
    let client = &ctx.shared.client;
    let signer = ctx.shared.evidence.as_ref();
    let mut schedule = DEFAULT_INTERVAL;
    let _permit = ctx.shared.rounds.acquire();
    match answer_challenge(client, guest, signer, &t.name, t.paused) {
        Ok(a) => {
            schedule = Duration::from_secs(a.schedule_secs.max(1));
            if let Some(e) = &a.locate_error {
                ctx.failed("locate", e);
            }
            let r = &a.result;
            tracing::info!(vm = %t.name, round, result = r.id, score = r.score, status = %r.status, alert = r.alert, "attested");
            ctx.shared.board.update(&t.name, &ctx.label, |s| {
                s.rounds += 1;
                s.last_attestation = Some(Attested {
                    time: vmattest_host::now(),
                    result_id: r.id,
                    score: r.score,
                    status: r.status.clone(),
                    alert: r.alert,
                });
            });
            match (r.rollback_seq, rollback) {
                (Some(seq), Some(from)) => match roll_back(guest, from, seq) {
                    Ok(report) => ctx.event(Event::RolledBack { round, seq, report }),
                    Err(e) => ctx.failed("rollback", &e),
                },
                (Some(seq), None) => ctx.event(Event::RollbackSkipped { round, seq }),
                (None, _) => {}
            }
        }
        Err(e) => ctx.failed("attest", &e),
    }
    if let Some(from) = rollback {
        answer_snapshot_requests(client, guest, signer, &t.name, from, round, &mut |e| {
            ctx.event(e)
        });
    }
    schedule
}

/// Folds old seqs when the chain has outgrown its retention by a margin, so that each prune
/// (a verified replay and a full state written again) folds many links, not one per take.
fn retain(ctx: &Ctx<'_>, conf: &SnapshotConf, chain: &Chain) {
    let Some(retention) = conf.retention() else {
        return;
    };
    let now = vmattest_host::now();
    match prune_due(conf, retention, now) {
        Ok(false) => return,
        Ok(true) => {}
        Err(e) => return ctx.failed("prune", &e),
    }
    // The store picks the keys in force after the fold's seq, old or rotated to.
    let signers: Vec<&dyn Signer> = chain
        .signers
        .iter()
        .chain(&chain.rotate)
        .map(AsRef::as_ref)
        .collect();
    let pruned = vmattest_host::chain::prune(
        &conf.store,
        retention,
        &chain.verifier,
        &signers,
        now,
        Box::new(vmattest_core::tree::NoProgress),
    );
    match pruned {
        Ok(p) => {
            tracing::info!(vm = %ctx.target.name, base = p.base, folded = p.folded, removed_bytes = p.removed_bytes, "chain pruned");
            ctx.shared.board.update(&ctx.target.name, &ctx.label, |s| {
                s.last_prune = Some(Pruned {
                    time: now,
                    base: p.base,
                    folded: p.folded,
                    removed_bytes: p.removed_bytes,
                });
            });
        }
        Err(e) => ctx.failed("prune", &e),
    }
}

/// Whether the chain holds a quarter more than its retention keeps (at least one seq, or one
/// snapshot interval beyond its age limit).
fn prune_due(
    conf: &SnapshotConf,
    retention: vmattest_host::chain::Retention,
    now: vmattest_core::record::UnixTime,
) -> Result<bool, vmattest_store::StoreError> {
    let store = vmattest_store::Store::open(&conf.store)?;
    let Some(h) = store.head()? else {
        return Ok(false);
    };
    let len = h.seq.0 - h.base.0 + 1;
    let by_count = retention.keep.is_some_and(|k| len > k + (k / 4).max(1));
    let by_age = match retention.within {
        Some(w) if h.base < h.seq => {
            let second = store.read_link(vmattest_core::chain::SeqNo(h.base.0 + 1))?;
            let age = now.secs.saturating_sub(second.value().time.secs);
            age > w + (w / 4).max(conf.interval_secs)
        }
        _ => false,
    };
    Ok(by_count || by_age)
}

fn snapshot(ctx: &Ctx<'_>, guest: &Guest<'_>, conf: &SnapshotConf, chain: &Chain) {
    let store = &conf.store;
    let (signers, rotate) = match chain.signing(store) {
        Ok(s) => s,
        Err(e) => return ctx.failed("snapshot", &e),
    };
    let opts = vmattest_store::TakeOptions {
        signers: &signers,
        time: vmattest_host::now(),
        secret: chain.secret.as_ref(),
        anchor: false,
        rotate_to: &rotate,
        revokers: &[],
    };
    let taken = match guest {
        Guest::Spec(spec) => vmattest_host::vm::take(
            store,
            spec,
            &opts,
            if conf.live {
                vmattest_qemu::Mode::Live
            } else {
                vmattest_qemu::Mode::Paused
            },
        )
        .map_err(|e| e.to_string()),
        Guest::Domain { name, uri } => {
            vmattest_host::domain::take(store, name, *uri, &opts).map_err(|e| e.to_string())
        }
    };
    match taken {
        Ok(r) => {
            let seq = r.summary.seq.0;
            let downtime_ms = u64::try_from(r.downtime.as_millis()).unwrap_or(u64::MAX);
            tracing::info!(vm = %ctx.target.name, seq, downtime_ms, changed_pages = r.summary.changed_pages, "snapshot taken");
            ctx.shared.board.update(&ctx.target.name, &ctx.label, |s| {
                s.snapshots += 1;
                s.last_snapshot = Some(Snapshotted {
                    time: opts.time,
                    seq,
                    downtime_ms,
                    changed_pages: r.summary.changed_pages,
                });
            });
            retain(ctx, conf, chain);
        }
        Err(e) => ctx.failed("snapshot", &e),
    }
}
