//! Which monitoring replica evaluates rules and sends notifications when several share one
//! PostgreSQL database: the one holding a session-level advisory lock, on a connection of
//! its own. The lock goes with the session, so a replica that stops, crashes or loses its
//! connection releases it, and another takes it at its next try (every second): a
//! fail-over within about a second. The others follow (see `Core::reload`): they answer
//! from the store, evaluate nothing and notify nobody, so that no notification is sent
//! twice.
//!
//! On the embedded SQLite store there is one process, and it always leads.

use pake_registry::Store;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use std::time::Duration;

/// The advisory lock's key: "pakemon1" in ASCII.
const KEY: i64 = 0x7061_6b65_6d6f_6e31;

/// How long a check of the lease may take before the lease is taken as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Lease {
    options: Option<PgConnectOptions>,
    connection: Option<PgConnection>,
    held: bool,
}

impl Lease {
    pub fn new(store: &Store) -> Lease {
        let options = match store {
            Store::Postgres(pool) => Some((*pool.connect_options()).clone().disable_statement_logging()),
            Store::Sqlite(_) => None,
        };
        Lease { options, connection: None, held: false }
    }

    /// Whether there is only one process (the embedded store), which always leads.
    pub fn is_single(&self) -> bool {
        self.options.is_none()
    }

    /// Whether this replica holds the lease now: one it holds is kept while its connection
    /// answers; otherwise it tries to take it. Never waits longer than [`CHECK_TIMEOUT`]
    /// (plus connecting).
    pub async fn hold(&mut self) -> bool {
        let Some(options) = &self.options else { return true };
        if self.connection.is_none() {
            match tokio::time::timeout(CHECK_TIMEOUT, PgConnection::connect_with(options)).await {
                Ok(Ok(connection)) => self.connection = Some(connection),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "the evaluation lease's connection failed");
                    return self.lost();
                }
                Err(_) => return self.lost(),
            }
        }
        let Some(connection) = self.connection.as_mut() else { return self.lost() };
        let query = if self.held {
            sqlx::query_scalar::<_, bool>("SELECT true")
        } else {
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(KEY)
        };
        match tokio::time::timeout(CHECK_TIMEOUT, query.fetch_one(connection)).await {
            Ok(Ok(holding)) => {
                self.held = holding;
                holding
            }
            _ => self.lost(),
        }
    }

    /// Drops the connection, and with it (on the server) any lock its session held.
    fn lost(&mut self) -> bool {
        self.connection = None;
        self.held = false;
        false
    }
}
