//! The writer's statements on either backend. SQLite runs them through its own API on the
//! writer's thread: sqlx would hand every statement to a connection thread and back, and on a
//! busy host each of those four wake-ups per batch cost more than the statement itself.
//! PostgreSQL goes through sqlx.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use sqlx::{Any, AssertSqlSafe, Row as _, Transaction};

/// A value bound to or read from one of the writer's statements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Val {
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// The type of a column a statement returns.
#[derive(Clone, Copy, Debug)]
pub(super) enum Col {
    Int,
    Text,
    Blob,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("column {index}: expected {expected:?}, found another type")]
    Column { index: usize, expected: Col },
    #[error("expected {0}")]
    Shape(&'static str),
}

impl ExecError {
    fn column(index: usize, expected: Col) -> ExecError {
        ExecError::Column { index, expected }
    }
}

/// A statement's rows, each with the columns asked for.
pub(super) type Rows = Result<Vec<Vec<Val>>, ExecError>;

/// One transaction of the writer.
pub(super) trait Exec {
    /// Runs `sql` with `args` bound to `$1`, `$2`, ... in order and returns its rows.
    async fn rows(&mut self, sql: &str, args: Vec<Val>, cols: &[Col]) -> Rows;
}

pub(super) struct SqlxTx(pub Transaction<'static, Any>);

impl Exec for SqlxTx {
    async fn rows(&mut self, sql: &str, args: Vec<Val>, cols: &[Col]) -> Rows {
        // The only dynamic SQL: generated placeholder lists; every value is bound.
        let mut q = sqlx::query(AssertSqlSafe(sql.to_owned()));
        for a in args {
            q = match a {
                Val::Int(v) => q.bind(v),
                Val::Text(v) => q.bind(v),
                Val::Blob(v) => q.bind(v),
            };
        }
        let mut out = Vec::new();
        for row in q.fetch_all(&mut *self.0).await? {
            let mut vals = Vec::with_capacity(cols.len());
            for (i, c) in cols.iter().enumerate() {
                vals.push(match c {
                    Col::Int => Val::Int(row.try_get(i)?),
                    Col::Text => Val::Text(row.try_get(i)?),
                    Col::Blob => Val::Blob(row.try_get(i)?),
                });
            }
            out.push(vals);
        }
        Ok(out)
    }
}

/// Prepared statements kept per connection; batch sizes vary, so each size is a statement.
const STATEMENT_CACHE: usize = 512;

/// The writer's own SQLite connection, set up as the pool's are.
pub(super) fn open_sqlite(path: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // WAL and FULL as the pool: every acknowledged commit is durable. Statement journals stay
    // in memory: a batch's multi-row statement journals every page it touches.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA secure_delete = ON; PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

pub(super) struct SqliteTx<'c>(pub rusqlite::Transaction<'c>);

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Val::Int(v) => ValueRef::Integer(*v),
            Val::Text(v) => ValueRef::Text(v.as_bytes()),
            Val::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

impl Exec for SqliteTx<'_> {
    async fn rows(&mut self, sql: &str, args: Vec<Val>, cols: &[Col]) -> Rows {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut vals = Vec::with_capacity(cols.len());
            for (i, c) in cols.iter().enumerate() {
                let v = row.get_ref(i)?;
                vals.push(match (c, v) {
                    (Col::Int, ValueRef::Integer(n)) => Val::Int(n),
                    (Col::Text, ValueRef::Text(t)) => Val::Text(
                        String::from_utf8(t.to_vec()).map_err(|_| ExecError::column(i, *c))?,
                    ),
                    (Col::Blob, ValueRef::Blob(b)) => Val::Blob(b.to_vec()),
                    _ => return Err(ExecError::column(i, *c)),
                });
            }
            out.push(vals);
        }
        Ok(out)
    }
}
