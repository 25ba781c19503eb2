//! Group commit: one task owns every write on the hot path (marking a nonce used, the result
//! and alert rows) and commits whatever is queued in one transaction of three multi-row
//! statements, so that one durable commit and a few round trips serve many requests. A reply
//! is sent only after its transaction commits.

use std::collections::{HashMap, HashSet};

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::Db;
use crate::error::ServerError;

/// Jobs per transaction; keeps every statement far below both backends' parameter limits.
const MAX_BATCH: usize = 256;
const QUEUE: usize = 4096;

#[derive(Debug)]
pub struct EvidenceCommit {
    pub nonce: Vec<u8>,
    /// When the nonce expires: its used mark may be forgotten after that.
    pub expires: i64,
    pub vm: String,
    pub now: i64,
    pub time: i64,
    pub score: i64,
    pub status: String,
    /// The result as JSON, its id left for the reader to fill in.
    pub body: String,
    pub evidence: Vec<u8>,
    /// Set when the result is below the VM's threshold.
    pub alert: Option<AlertDraft>,
}

/// What a result below the threshold says. Results of one VM with the same `cause` share one
/// active alert.
#[derive(Clone, Debug)]
pub struct AlertDraft {
    pub cause: String,
    pub message: String,
    /// The VM has a webhook: a new alert is queued for delivery.
    pub webhook: bool,
}

/// The active alert a result was counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlertRef {
    pub id: i64,
    /// This result opened it; otherwise it repeats an alert already active.
    pub new: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum NonceOutcome {
    /// The nonce was marked used and the result stored.
    Stored {
        result_id: i64,
        alert: Option<AlertRef>,
    },
    /// The nonce was used before: nothing was stored.
    Replayed,
}

type Job = (
    EvidenceCommit,
    oneshot::Sender<Result<NonceOutcome, String>>,
);

#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer on a thread of its own, with its own connection: request handlers
    /// busy with signatures must not delay the commits every response waits for.
    pub async fn spawn(db: &Db) -> Result<Writer, ServerError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (ready_tx, ready) = oneshot::channel();
        let url = db.url().to_string();
        std::thread::Builder::new()
            .name("vmattest-writer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx
                            .send(Err(ServerError::Corrupt(format!("writer runtime: {e}"))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match Db::open(&url, Some(1)).await {
                        Ok(db) => {
                            let _ = ready_tx.send(Ok(()));
                            run(db, rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| ServerError::Corrupt(format!("writer thread: {e}")))?;
        ready.await.map_err(|_| ServerError::WriterGone)??;
        Ok(Writer { tx })
    }

    pub async fn submit(&self, commit: EvidenceCommit) -> Result<NonceOutcome, ServerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((commit, reply))
            .await
            .map_err(|_| ServerError::WriterGone)?;
        match rx.await {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(e)) => Err(ServerError::Corrupt(e)),
            Err(_) => Err(ServerError::WriterGone),
        }
    }
}

/// VMs with an active alert, as far as this writer knows. A passing result resolves alerts only
/// for these, so that the common case, no alert anywhere, costs no statement. Reloaded from the
/// database every [`ALERTING_TTL`] to see the alerts of other servers sharing it; a passing
/// result there within that time resolves the alert at the next one after the reload.
#[derive(Debug, Default)]
struct Alerting {
    vms: HashSet<String>,
    loaded: Option<std::time::Instant>,
}

const ALERTING_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl Alerting {
    async fn refresh(&mut self, db: &Db) -> Result<(), sqlx::Error> {
        if self.loaded.is_some_and(|t| t.elapsed() < ALERTING_TTL) {
            return Ok(());
        }
        self.vms = sqlx::query("SELECT DISTINCT vm FROM alerts WHERE resolved_time IS NULL")
            .fetch_all(&db.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        self.loaded = Some(std::time::Instant::now());
        Ok(())
    }
}

async fn run(db: Db, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut alerting = Alerting::default();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let commits: Vec<&EvidenceCommit> = batch.iter().map(|(c, _)| c).collect();
        let started = std::time::Instant::now();
        let result = commit_batch(&db, &commits, &mut alerting).await;
        if result.is_err() {
            // The set may have changed with a transaction that did not commit.
            alerting.loaded = None;
        }
        tracing::debug!(
            jobs = commits.len(),
            micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "batch committed"
        );
        match result {
            Ok(outcomes) => {
                for ((_, reply), o) in batch.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok(o));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "batch commit failed");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(format!("commit failed: {e}")));
                }
            }
        }
    }
}

/// `($1, $2, ...), ($n, ...)` for `rows` tuples of `width` placeholders after `offset`.
fn tuples(rows: usize, width: usize, offset: usize, suffix: &str) -> String {
    let mut s = String::with_capacity(rows * width * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..width {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&(offset + r * width + c + 1).to_string());
        }
        s.push_str(suffix);
        s.push(')');
    }
    s
}

type AnyQuery = Query<'static, Any, AnyArguments>;

/// The only dynamic SQL: generated placeholder lists; every value is bound.
fn query(sql: String) -> AnyQuery {
    sqlx::query(AssertSqlSafe(sql))
}

async fn commit_batch(
    db: &Db,
    batch: &[&EvidenceCommit],
    alerting: &mut Alerting,
) -> Result<Vec<NonceOutcome>, sqlx::Error> {
    let mut out: Vec<NonceOutcome> = batch.iter().map(|_| NonceOutcome::Replayed).collect();
    alerting.refresh(db).await?;
    let mut tx = db.pool.begin().await?;
    store(&mut tx, batch, &mut out, alerting).await?;
    tx.commit().await?;
    Ok(out)
}

async fn store(
    tx: &mut Transaction<'static, Any>,
    batch: &[&EvidenceCommit],
    out: &mut [NonceOutcome],
    alerting: &mut Alerting,
) -> Result<(), sqlx::Error> {
    if batch.is_empty() {
        return Ok(());
    }
    let ev: Vec<(usize, &EvidenceCommit)> = batch.iter().copied().enumerate().collect();
    // Mark used: a nonce already there is not returned.
    let mut q = query(format!(
        "INSERT INTO used_nonces (nonce, vm, expires) VALUES {} ON CONFLICT (nonce) DO NOTHING \
         RETURNING nonce",
        tuples(ev.len(), 3, 0, "")
    ));
    for (_, e) in &ev {
        q = q.bind(e.nonce.clone()).bind(e.vm.clone()).bind(e.expires);
    }
    let consumed: HashSet<Vec<u8>> = q
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get::<Vec<u8>, _>(0))
        .collect::<Result<_, _>>()?;
    // A nonce posted twice in one batch is granted to the first post only.
    let mut granted: HashSet<&[u8]> = HashSet::new();
    let winners: Vec<(usize, &EvidenceCommit)> = ev
        .into_iter()
        .filter(|(_, e)| consumed.contains(&e.nonce) && granted.insert(&e.nonce))
        .collect();
    if winners.is_empty() {
        return Ok(());
    }
    let mut q = query(format!(
        "INSERT INTO results (vm, time, nonce, score, status, body, evidence) VALUES {} \
         RETURNING id, nonce",
        tuples(winners.len(), 7, 0, "")
    ));
    for (_, e) in &winners {
        q = q
            .bind(e.vm.clone())
            .bind(e.time)
            .bind(e.nonce.clone())
            .bind(e.score)
            .bind(e.status.clone())
            .bind(e.body.clone())
            .bind(e.evidence.clone());
    }
    let ids: HashMap<Vec<u8>, i64> = q
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get::<Vec<u8>, _>(1)?, r.try_get::<i64, _>(0)?)))
        .collect::<Result<_, sqlx::Error>>()?;
    let mut stored = Vec::with_capacity(winners.len());
    for (i, e) in &winners {
        let result_id = ids.get(&e.nonce).copied().ok_or_else(|| {
            sqlx::Error::Protocol(
                "a stored result did not come back from INSERT ... RETURNING".into(),
            )
        })?;
        out[*i] = NonceOutcome::Stored {
            result_id,
            alert: None,
        };
        stored.push((*i, *e, result_id));
    }
    let alerts = upsert_alerts(tx, &stored).await?;
    for (i, _, result_id) in &stored {
        if let Some(alert) = alerts.get(result_id) {
            out[*i] = NonceOutcome::Stored {
                result_id: *result_id,
                alert: Some(*alert),
            };
        }
    }
    alerting.vms.extend(
        stored
            .iter()
            .filter(|(_, e, _)| e.alert.is_some())
            .map(|(_, e, _)| e.vm.clone()),
    );
    resolve_alerts(tx, &stored, alerting).await
}

/// Counts each alerting result in the active alert of its VM and cause, opening one where none
/// is active; returns the alert of each alerting result id.
async fn upsert_alerts(
    tx: &mut Transaction<'static, Any>,
    stored: &[(usize, &EvidenceCommit, i64)],
) -> Result<HashMap<i64, AlertRef>, sqlx::Error> {
    // One row per (VM, cause): PostgreSQL refuses to update a row twice in one statement.
    struct Group<'a> {
        first: (&'a EvidenceCommit, i64),
        last: (&'a EvidenceCommit, i64),
        results: Vec<i64>,
    }
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for (_, e, result_id) in stored {
        let Some(draft) = &e.alert else { continue };
        let key = (e.vm.as_str(), draft.cause.as_str());
        match index.get(&key) {
            Some(&g) => {
                groups[g].last = (e, *result_id);
                groups[g].results.push(*result_id);
            }
            None => {
                index.insert(key, groups.len());
                groups.push(Group {
                    first: (e, *result_id),
                    last: (e, *result_id),
                    results: vec![*result_id],
                });
            }
        }
    }
    if groups.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = query(format!(
        "INSERT INTO alerts (vm, cause, result_id, time, webhook, next_attempt, count, \
         last_result_id, last_time, score, status, message, delivered, attempts) VALUES {} \
         ON CONFLICT (vm, cause) WHERE resolved_time IS NULL DO UPDATE SET \
         count = alerts.count + excluded.count, last_result_id = excluded.last_result_id, \
         last_time = excluded.last_time, score = excluded.score, status = excluded.status, \
         message = excluded.message RETURNING id, result_id, vm, cause",
        tuples(groups.len(), 12, 0, ", 0, 0")
    ));
    for g in &groups {
        let (first, first_id) = g.first;
        let (last, last_id) = g.last;
        let draft = first.alert.clone().unwrap_or_else(|| AlertDraft {
            cause: String::new(),
            message: String::new(),
            webhook: false,
        });
        let message = last
            .alert
            .as_ref()
            .map_or(String::new(), |d| d.message.clone());
        q = q
            .bind(first.vm.clone())
            .bind(draft.cause)
            .bind(first_id)
            .bind(first.now)
            .bind(i64::from(draft.webhook))
            .bind(if draft.webhook { first.now } else { i64::MAX })
            .bind(i64::try_from(g.results.len()).unwrap_or(i64::MAX))
            .bind(last_id)
            .bind(last.now)
            .bind(last.score)
            .bind(last.status.clone())
            .bind(message);
    }
    let mut refs = HashMap::new();
    for row in q.fetch_all(&mut **tx).await? {
        let (id, opened_by): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        let (vm, cause): (String, String) = (row.try_get(2)?, row.try_get(3)?);
        let Some(&g) = index.get(&(vm.as_str(), cause.as_str())) else {
            continue;
        };
        let group = &groups[g];
        for (n, result_id) in group.results.iter().enumerate() {
            let new = n == 0 && opened_by == group.first.1;
            refs.insert(*result_id, AlertRef { id, new });
        }
    }
    Ok(refs)
}

/// A VM whose last result in the batch is at or above its threshold has no active alert left.
async fn resolve_alerts(
    tx: &mut Transaction<'static, Any>,
    stored: &[(usize, &EvidenceCommit, i64)],
    alerting: &mut Alerting,
) -> Result<(), sqlx::Error> {
    let mut last: HashMap<&str, &EvidenceCommit> = HashMap::new();
    for (_, e, _) in stored {
        last.insert(e.vm.as_str(), e);
    }
    let passing: Vec<&EvidenceCommit> = last
        .into_values()
        .filter(|e| e.alert.is_none() && alerting.vms.contains(&e.vm))
        .collect();
    let Some(now) = passing.iter().map(|e| e.now).max() else {
        return Ok(());
    };
    let mut q = query(format!(
        "UPDATE alerts SET resolved_time = $1 WHERE resolved_time IS NULL AND vm IN ({})",
        (0..passing.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .bind(now);
    for e in &passing {
        q = q.bind(e.vm.clone());
    }
    q.execute(&mut **tx).await?;
    for e in passing {
        alerting.vms.remove(&e.vm);
    }
    Ok(())
}
