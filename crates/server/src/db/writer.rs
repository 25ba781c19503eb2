//! Group commit: one task owns every write on the hot path (marking a nonce used, the result
//! and alert rows) and commits whatever is queued in one transaction of three multi-row
//! statements, so that one durable commit and a few round trips serve many requests. A reply
//! is sent only after its transaction commits.

use std::collections::{HashMap, HashSet};

use tokio::sync::{mpsc, oneshot};

use super::Db;
use super::exec::{self, Col, Exec, ExecError, Val};
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
                    match Conn::open(&url).await {
                        Ok(conn) => {
                            let _ = ready_tx.send(Ok(()));
                            run(conn, rx).await;
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
    async fn refresh(&mut self, tx: &mut impl Exec) -> Result<(), ExecError> {
        if self.loaded.is_some_and(|t| t.elapsed() < ALERTING_TTL) {
            return Ok(());
        }
        self.vms = tx
            .rows(
                "SELECT DISTINCT vm FROM alerts WHERE resolved_time IS NULL",
                Vec::new(),
                &[Col::Text],
            )
            .await?
            .into_iter()
            .filter_map(|mut r| match r.pop() {
                Some(Val::Text(vm)) => Some(vm),
                _ => None,
            })
            .collect();
        self.loaded = Some(std::time::Instant::now());
        Ok(())
    }
}

/// The writer's connection: SQLite's own on a database file, else one through sqlx.
enum Conn {
    Sqlite(rusqlite::Connection),
    Sqlx(Db),
}

impl Conn {
    async fn open(url: &str) -> Result<Conn, ServerError> {
        match super::sqlite_path(url) {
            Some(path) => exec::open_sqlite(&path)
                .map(Conn::Sqlite)
                .map_err(|e| ServerError::Corrupt(format!("writer connection: {e}"))),
            None => Db::open(url, Some(1)).await.map(Conn::Sqlx),
        }
    }

    async fn commit(
        &mut self,
        batch: &[&EvidenceCommit],
        alerting: &mut Alerting,
    ) -> Result<Vec<NonceOutcome>, ExecError> {
        let mut out: Vec<NonceOutcome> = batch.iter().map(|_| NonceOutcome::Replayed).collect();
        match self {
            Conn::Sqlite(conn) => {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut tx = exec::SqliteTx(tx);
                store(&mut tx, batch, &mut out, alerting).await?;
                tx.0.commit()?;
            }
            Conn::Sqlx(db) => {
                let mut tx = exec::SqlxTx(db.pool.begin().await?);
                store(&mut tx, batch, &mut out, alerting).await?;
                tx.0.commit().await?;
            }
        }
        Ok(out)
    }
}

async fn run(mut conn: Conn, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut alerting = Alerting::default();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let commits: Vec<&EvidenceCommit> = batch.iter().map(|(c, _)| c).collect();
        let started = std::time::Instant::now();
        let result = conn.commit(&commits, &mut alerting).await;
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

fn protocol(what: &'static str) -> ExecError {
    ExecError::Shape(what)
}

async fn store(
    tx: &mut impl Exec,
    batch: &[&EvidenceCommit],
    out: &mut [NonceOutcome],
    alerting: &mut Alerting,
) -> Result<(), ExecError> {
    alerting.refresh(tx).await?;
    if batch.is_empty() {
        return Ok(());
    }
    // Mark used: a nonce already there is not returned.
    let sql = format!(
        "INSERT INTO used_nonces (nonce, vm, expires) VALUES {} ON CONFLICT (nonce) DO NOTHING \
         RETURNING nonce",
        tuples(batch.len(), 3, 0, "")
    );
    let mut args = Vec::with_capacity(batch.len() * 3);
    for e in batch {
        args.extend([
            Val::Blob(e.nonce.clone()),
            Val::Text(e.vm.clone()),
            Val::Int(e.expires),
        ]);
    }
    let consumed: HashSet<Vec<u8>> = tx
        .rows(&sql, args, &[Col::Blob])
        .await?
        .into_iter()
        .filter_map(|mut r| match r.pop() {
            Some(Val::Blob(n)) => Some(n),
            _ => None,
        })
        .collect();
    // A nonce posted twice in one batch is granted to the first post only.
    let mut granted: HashSet<&[u8]> = HashSet::new();
    let winners: Vec<(usize, &EvidenceCommit)> = batch
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, e)| consumed.contains(&e.nonce) && granted.insert(&e.nonce))
        .collect();
    if winners.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO results (vm, time, nonce, score, status, body, evidence) VALUES {} \
         RETURNING id, nonce",
        tuples(winners.len(), 7, 0, "")
    );
    let mut args = Vec::with_capacity(winners.len() * 7);
    for (_, e) in &winners {
        args.extend([
            Val::Text(e.vm.clone()),
            Val::Int(e.time),
            Val::Blob(e.nonce.clone()),
            Val::Int(e.score),
            Val::Text(e.status.clone()),
            Val::Text(e.body.clone()),
            Val::Blob(e.evidence.clone()),
        ]);
    }
    let mut ids: HashMap<Vec<u8>, i64> = HashMap::new();
    for row in tx.rows(&sql, args, &[Col::Int, Col::Blob]).await? {
        if let [Val::Int(id), Val::Blob(nonce)] =
            <[Val; 2]>::try_from(row).map_err(|_| protocol("a result row of two columns"))?
        {
            ids.insert(nonce, id);
        }
    }
    let mut stored = Vec::with_capacity(winners.len());
    for (i, e) in &winners {
        let result_id = ids
            .get(&e.nonce)
            .copied()
            .ok_or_else(|| protocol("each stored result back from INSERT ... RETURNING"))?;
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
    tx: &mut impl Exec,
    stored: &[(usize, &EvidenceCommit, i64)],
) -> Result<HashMap<i64, AlertRef>, ExecError> {
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
    let sql = format!(
        "INSERT INTO alerts (vm, cause, result_id, time, webhook, next_attempt, count, \
         last_result_id, last_time, score, status, message, delivered, attempts) VALUES {} \
         ON CONFLICT (vm, cause) WHERE resolved_time IS NULL DO UPDATE SET \
         count = alerts.count + excluded.count, last_result_id = excluded.last_result_id, \
         last_time = excluded.last_time, score = excluded.score, status = excluded.status, \
         message = excluded.message RETURNING id, result_id, vm, cause",
        tuples(groups.len(), 12, 0, ", 0, 0")
    );
    let mut args = Vec::with_capacity(groups.len() * 12);
    for g in &groups {
        let (first, first_id) = g.first;
        let (last, last_id) = g.last;
        let (cause, webhook) = first
            .alert
            .as_ref()
            .map_or((String::new(), false), |d| (d.cause.clone(), d.webhook));
        let message = last
            .alert
            .as_ref()
            .map_or(String::new(), |d| d.message.clone());
        args.extend([
            Val::Text(first.vm.clone()),
            Val::Text(cause),
            Val::Int(first_id),
            Val::Int(first.now),
            Val::Int(i64::from(webhook)),
            Val::Int(if webhook { first.now } else { i64::MAX }),
            Val::Int(i64::try_from(g.results.len()).unwrap_or(i64::MAX)),
            Val::Int(last_id),
            Val::Int(last.now),
            Val::Int(last.score),
            Val::Text(last.status.clone()),
            Val::Text(message),
        ]);
    }
    let mut refs = HashMap::new();
    let cols = [Col::Int, Col::Int, Col::Text, Col::Text];
    for row in tx.rows(&sql, args, &cols).await? {
        let [
            Val::Int(id),
            Val::Int(opened_by),
            Val::Text(vm),
            Val::Text(cause),
        ] = <[Val; 4]>::try_from(row).map_err(|_| protocol("an alert row of four columns"))?
        else {
            continue;
        };
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
    tx: &mut impl Exec,
    stored: &[(usize, &EvidenceCommit, i64)],
    alerting: &mut Alerting,
) -> Result<(), ExecError> {
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
    let sql = format!(
        "UPDATE alerts SET resolved_time = $1 WHERE resolved_time IS NULL AND vm IN ({})",
        (0..passing.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut args = vec![Val::Int(now)];
    args.extend(passing.iter().map(|e| Val::Text(e.vm.clone())));
    tx.rows(&sql, args, &[]).await?;
    for e in passing {
        alerting.vms.remove(&e.vm);
    }
    Ok(())
}
