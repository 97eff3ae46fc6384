//! Which process a queued or running benchmark belongs to, so that a replica starting
//! beside live ones fails only the benchmarks of a process that is gone.
//!
//! On PostgreSQL each process holds a session-level advisory lock per benchmark it has
//! queued, on a connection of its own, until the benchmark ends. The lock goes with the
//! session: a process that stops, crashes or loses its connection releases it, and a
//! benchmark whose lock another process can take has no process left to run it. On the
//! embedded SQLite store there is one process, so whatever a previous start left queued
//! or running was interrupted.

use pake_registry::Store;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

/// The advisory locks' class: "perf" in ASCII, beside the benchmark's own key.
const CLASS: i32 = 0x7065_7266;

/// How long one lock request may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A benchmark's lock key within [`CLASS`].
fn key(id: Uuid) -> i32 {
    let bytes = id.as_bytes();
    i32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]])
}

#[derive(Default)]
struct Session {
    connection: Option<PgConnection>,
    /// The benchmarks this process claimed and has not released.
    claimed: BTreeSet<Uuid>,
}

pub struct Ownership {
    options: Option<PgConnectOptions>,
    session: tokio::sync::Mutex<Session>,
}

impl Ownership {
    pub fn new(store: &Store) -> Ownership {
        let options = match store {
            Store::Postgres(pool) => Some((*pool.connect_options()).clone().disable_statement_logging()),
            Store::Sqlite(_) => None,
        };
        Ownership { options, session: tokio::sync::Mutex::new(Session::default()) }
    }

    /// The session's connection, opened when there is none. Locks of a lost session are
    /// not taken again: the benchmarks they held may be failed by another process (and
    /// their runs here then stop), as when this process is gone.
    async fn connected<'a>(&self, session: &'a mut Session) -> Option<&'a mut PgConnection> {
        let options = self.options.as_ref()?;
        if session.connection.is_none() {
            match tokio::time::timeout(TIMEOUT, PgConnection::connect_with(options)).await {
                Ok(Ok(connection)) => session.connection = Some(connection),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "the benchmark ownership connection failed");
                    return None;
                }
                Err(_) => return None,
            }
        }
        session.connection.as_mut()
    }

    /// Runs `sql` with the benchmark's key on the session; the connection is dropped (and
    /// its locks with it, to be taken again) when it fails.
    async fn ask(&self, session: &mut Session, sql: &'static str, id: Uuid) -> Option<bool> {
        let connection = self.connected(session).await?;
        let query = sqlx::query_scalar::<_, bool>(sql).bind(CLASS).bind(key(id)).fetch_one(connection);
        match tokio::time::timeout(TIMEOUT, query).await {
            Ok(Ok(answer)) => Some(answer),
            _ => {
                session.connection = None;
                None
            }
        }
    }

    /// Marks a benchmark as this process's until [`Ownership::release`].
    pub async fn claim(&self, id: Uuid) {
        if self.options.is_none() {
            return;
        }
        let mut session = self.session.lock().await;
        session.claimed.insert(id);
        if self.ask(&mut session, "SELECT pg_try_advisory_lock($1, $2)", id).await != Some(true) {
            tracing::warn!(%id, "the benchmark's ownership is not held; another replica may fail it");
        }
    }

    pub async fn release(&self, id: Uuid) {
        if self.options.is_none() {
            return;
        }
        let mut session = self.session.lock().await;
        if session.claimed.remove(&id) {
            self.ask(&mut session, "SELECT pg_advisory_unlock($1, $2)", id).await;
        }
    }

    /// Whether no process holds the benchmark (so none will end it). Never true of one
    /// this process claimed; unknown (the store cannot be asked) counts as held.
    pub async fn orphaned(&self, id: Uuid) -> bool {
        if self.options.is_none() {
            return true;
        }
        let mut session = self.session.lock().await;
        if session.claimed.contains(&id) {
            return false;
        }
        match self.ask(&mut session, "SELECT pg_try_advisory_lock($1, $2)", id).await {
            Some(true) => {
                self.ask(&mut session, "SELECT pg_advisory_unlock($1, $2)", id).await;
                true
            }
            _ => false,
        }
    }

    /// Whether several processes may share the store (and their benchmarks with it).
    pub fn is_shared(&self) -> bool {
        self.options.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_id() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(key(id), 0x4455_6677);
    }
}
