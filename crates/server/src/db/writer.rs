//! Group commit: one task owns every write on the hot path (nonce issue and consume, result
//! and alert rows) and commits whatever is queued in one transaction, so that a durable
//! commit is shared by many requests. A reply is sent only after its transaction commits.

use sqlx::{Any, Row, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::Db;
use crate::error::ServerError;

const MAX_BATCH: usize = 256;
const QUEUE: usize = 4096;

#[derive(Debug)]
pub struct EvidenceCommit {
    pub nonce: Vec<u8>,
    pub vm: String,
    pub subset: String,
    pub now: i64,
    pub time: i64,
    pub score: i64,
    pub status: String,
    /// The result as JSON, its id left for the reader to fill in.
    pub body: String,
    pub evidence: Vec<u8>,
    /// Set when the result raises an alert: its message, and whether a webhook is due.
    pub alert: Option<(String, bool)>,
}

#[derive(Debug)]
pub enum Commit {
    Nonce {
        nonce: Vec<u8>,
        vm: String,
        subset: String,
        expires: i64,
    },
    Evidence(Box<EvidenceCommit>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum NonceOutcome {
    Issued,
    /// The nonce was consumed and the result stored.
    Stored {
        result_id: i64,
        alert_id: Option<i64>,
    },
    /// No unused, unexpired nonce for this VM and subset: nothing was stored.
    Refused,
}

type Job = (Commit, oneshot::Sender<Result<NonceOutcome, String>>);

#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    pub fn spawn(db: Db) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, rx));
        Writer { tx }
    }

    pub async fn submit(&self, commit: Commit) -> Result<NonceOutcome, ServerError> {
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

async fn run(db: Db, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match commit_batch(&db, &batch).await {
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

async fn commit_batch(db: &Db, batch: &[Job]) -> Result<Vec<NonceOutcome>, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    let mut out = Vec::with_capacity(batch.len());
    for (commit, _) in batch {
        out.push(apply(&mut tx, commit).await?);
    }
    tx.commit().await?;
    Ok(out)
}

async fn apply(
    tx: &mut Transaction<'_, Any>,
    commit: &Commit,
) -> Result<NonceOutcome, sqlx::Error> {
    match commit {
        Commit::Nonce {
            nonce,
            vm,
            subset,
            expires,
        } => {
            sqlx::query(
                "INSERT INTO nonces (nonce, vm, subset, expires, used) VALUES ($1, $2, $3, $4, 0)",
            )
            .bind(nonce.clone())
            .bind(vm.clone())
            .bind(subset.clone())
            .bind(*expires)
            .execute(&mut **tx)
            .await?;
            Ok(NonceOutcome::Issued)
        }
        Commit::Evidence(e) => {
            let used = sqlx::query(
                "UPDATE nonces SET used = 1 WHERE nonce = $1 AND vm = $2 AND subset = $3 \
                 AND used = 0 AND expires >= $4",
            )
            .bind(e.nonce.clone())
            .bind(e.vm.clone())
            .bind(e.subset.clone())
            .bind(e.now)
            .execute(&mut **tx)
            .await?;
            if used.rows_affected() != 1 {
                return Ok(NonceOutcome::Refused);
            }
            let row = sqlx::query(
                "INSERT INTO results (vm, time, nonce, score, status, body, evidence) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(e.vm.clone())
            .bind(e.time)
            .bind(e.nonce.clone())
            .bind(e.score)
            .bind(e.status.clone())
            .bind(e.body.clone())
            .bind(e.evidence.clone())
            .fetch_one(&mut **tx)
            .await?;
            let result_id: i64 = row.try_get(0)?;
            let alert_id = match &e.alert {
                Some((message, webhook)) => {
                    let row = sqlx::query(
                        "INSERT INTO alerts (vm, result_id, time, score, status, message, \
                         delivered, attempts, next_attempt) VALUES ($1, $2, $3, $4, $5, $6, 0, 0, $7) \
                         RETURNING id",
                    )
                    .bind(e.vm.clone())
                    .bind(result_id)
                    .bind(e.now)
                    .bind(e.score)
                    .bind(e.status.clone())
                    .bind(message.clone())
                    .bind(if *webhook { e.now } else { i64::MAX })
                    .fetch_one(&mut **tx)
                    .await?;
                    Some(row.try_get(0)?)
                }
                None => None,
            };
            Ok(NonceOutcome::Stored {
                result_id,
                alert_id,
            })
        }
    }
}
