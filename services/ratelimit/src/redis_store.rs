//! Redis-backed decisions: one EVALSHA per decision, bounded in time, with a short
//! backoff after a failure so that an outage costs requests no latency.
//!
//! The connection is a single multiplexed connection (shared by all requests) managed
//! here rather than by `redis::aio::ConnectionManager`: after a failure it is dropped, no
//! request touches Redis until the backoff has passed, and then one request probes with a
//! fresh, time-bounded connection attempt. Every other request falls back meanwhile, so
//! recovery needs no restart and costs at most one bounded attempt per backoff.

use crate::algo::{Outcome, Rates, WEIGHT_ONE};
use crate::{Algorithm, Error, RedisOptions};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::time::timeout_at;

const GCRA_LUA: &str = include_str!("gcra.lua");
const SLIDING_WINDOW_LUA: &str = include_str!("sliding_window.lua");

/// Health as last observed; only transitions are logged.
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

pub(crate) struct RedisStore {
    client: Client,
    connection_config: AsyncConnectionConfig,
    prefix: String,
    options: RedisOptions,
    gcra: Script,
    sliding_window: Script,
    /// Identifies this store's connections in each thread's [`CONNECTIONS`].
    id: u64,
    /// Serialises connection attempts, so that a probe is one attempt, not a stampede.
    connecting: tokio::sync::Mutex<()>,
    epoch: Instant,
    /// No Redis call before this time (µs since `epoch`).
    retry_at: AtomicU64,
    health: AtomicU8,
}

// Connections by store id, one per thread: a connection's I/O runs on the runtime of the
// thread that opened it, so a gateway worker's decisions never hop to another thread and
// back (each worker is its own single-threaded runtime). Each entry carries its
// generation, so that a failure forgets exactly the connection that failed.
thread_local! {
    static CONNECTIONS: RefCell<HashMap<u64, (u64, MultiplexedConnection)>> = RefCell::new(HashMap::new());
}

/// Store ids and connection generations, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

enum Failure {
    /// Redis was not tried (backoff, or another request's probe is under way).
    Skipped,
    /// Redis was tried and failed; `generation` is the connection used, if any.
    Failed { generation: Option<u64>, reason: String },
    /// An established connection failed at the socket: worth one fresh connection at once.
    Broken { generation: u64, reason: String },
}

impl RedisStore {
    pub(crate) fn new(url: &str, prefix: &str, options: RedisOptions) -> Result<RedisStore, Error> {
        if options.timeout.is_zero() {
            return Err(Error::InvalidOptions("timeout must be positive"));
        }
        let client = Client::open(url).map_err(Error::InvalidUrl)?;
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout));
        Ok(RedisStore {
            client,
            connection_config,
            prefix: prefix.to_owned(),
            options,
            gcra: Script::new(GCRA_LUA),
            sliding_window: Script::new(SLIDING_WINDOW_LUA),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connecting: tokio::sync::Mutex::new(()),
            epoch: Instant::now(),
            retry_at: AtomicU64::new(0),
            health: AtomicU8::new(UNKNOWN),
        })
    }

    /// `Some(true)` while the last Redis call succeeded.
    pub(crate) fn available(&self) -> bool {
        self.health.load(Ordering::Relaxed) == UP
    }

    /// Time until the next attempt to reach Redis, zero if one would be made now.
    pub(crate) fn backoff_left(&self) -> Duration {
        Duration::from_micros(self.retry_at.load(Ordering::Relaxed).saturating_sub(self.now_us()))
    }

    /// Connects and loads the scripts ahead of the first request.
    pub(crate) async fn warm_up(&self) {
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        match self.connection(deadline).await {
            Ok(_) => self.mark_up(),
            Err(Failure::Skipped) => {}
            Err(Failure::Failed { generation, reason }) => self.mark_down(generation, &reason),
            Err(Failure::Broken { generation, reason }) => self.mark_down(Some(generation), &reason),
        }
    }

    /// The decision from Redis, or `None` when Redis is not available for it.
    pub(crate) async fn check(&self, key: &str, algorithm: Algorithm, rates: &Rates) -> Option<Outcome> {
        if !self.backoff_left().is_zero() {
            return None;
        }
        let mut first = self.decide(key, algorithm, rates).await;
        // A connection that broke while idle (Redis restarted, a proxy dropped it) is only
        // found out on use. One fresh connection is tried at once, so that a Redis that is
        // back does not cost a backoff of local decisions.
        if let Err(Failure::Broken { generation, .. }) = &first {
            self.forget(*generation);
            first = self.decide(key, algorithm, rates).await;
        }
        match first {
            Ok(outcome) => {
                self.mark_up();
                Some(outcome)
            }
            Err(Failure::Skipped) => None,
            Err(Failure::Failed { generation, reason }) => {
                self.mark_down(generation, &reason);
                None
            }
            Err(Failure::Broken { generation, reason }) => {
                self.mark_down(Some(generation), &reason);
                None
            }
        }
    }

    /// Drops this thread's connection if it is still the one of `generation`.
    fn forget(&self, generation: u64) {
        CONNECTIONS.with(|connections| {
            let mut connections = connections.borrow_mut();
            if connections.get(&self.id).is_some_and(|(current, _)| *current == generation) {
                connections.remove(&self.id);
            }
        });
    }

    async fn decide(&self, key: &str, algorithm: Algorithm, rates: &Rates) -> Result<Outcome, Failure> {
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        let (generation, mut connection) = self.connection(deadline).await?;
        let failed = |reason: String| Failure::Failed { generation: Some(generation), reason };
        // The GCRA script answers in µs, the sliding-window one in ms.
        let (invocation, duration): (_, fn(u64) -> Duration) = match algorithm {
            Algorithm::Gcra => {
                let mut invocation = self.gcra.key(format!("{}rl:gcra:{key}", self.prefix));
                invocation.arg(rates.interval_us).arg(rates.tolerance_us);
                (invocation, Duration::from_micros)
            }
            Algorithm::SlidingWindow => {
                let mut invocation = self.sliding_window.key(format!("{}rl:sw:{key}", self.prefix));
                invocation.arg(rates.period_ms).arg(rates.quota).arg(WEIGHT_ONE);
                (invocation, Duration::from_millis)
            }
        };
        // EVALSHA; the script is loaded with each new connection, and `invoke_async`
        // loads it again should the server have lost it (SCRIPT FLUSH).
        let reply: (i64, i64, i64, i64) = timeout_at(deadline, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| failed("timed out".into()))?
            .map_err(|e| {
                if !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped()) {
                    Failure::Broken { generation, reason: e.to_string() }
                } else {
                    failed(e.to_string())
                }
            })?;
        let (allowed, remaining, reset, retry) = reply;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(Outcome {
            allowed: allowed == 1,
            remaining: count(remaining),
            reset_after: duration(count(reset)),
            retry_after: duration(count(retry)),
        })
    }

    /// The current connection, or a new one (connected and with the scripts loaded).
    async fn connection(&self, deadline: tokio::time::Instant) -> Result<(u64, MultiplexedConnection), Failure> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _connecting = if self.health.load(Ordering::Relaxed) == DOWN {
            // During an outage one request probes; the others fall back rather than wait.
            self.connecting.try_lock().map_err(|_| Failure::Skipped)?
        } else {
            timeout_at(deadline, self.connecting.lock()).await.map_err(|_| Failure::Skipped)?
        };
        // Another request may have connected, or failed, while this one waited.
        if let Some(current) = self.current() {
            return Ok(current);
        }
        if !self.backoff_left().is_zero() {
            return Err(Failure::Skipped);
        }
        let connect = async {
            let mut connection =
                self.client.get_multiplexed_async_connection_with_config(&self.connection_config).await?;
            self.gcra.load_async(&mut connection).await?;
            self.sliding_window.load_async(&mut connection).await?;
            Ok::<_, redis::RedisError>(connection)
        };
        let connection = timeout_at(deadline, connect)
            .await
            .map_err(|_| Failure::Failed { generation: None, reason: "connection timed out".into() })?
            .map_err(|e| Failure::Failed { generation: None, reason: e.to_string() })?;
        let generation = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        CONNECTIONS.with(|connections| connections.borrow_mut().insert(self.id, (generation, connection.clone())));
        Ok((generation, connection))
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        CONNECTIONS.with(|connections| connections.borrow().get(&self.id).cloned())
    }

    fn mark_up(&self) {
        if self.health.load(Ordering::Relaxed) == UP {
            return;
        }
        match self.health.swap(UP, Ordering::Relaxed) {
            DOWN => {
                tracing::info!(prefix = %self.prefix, "rate limiting: Redis is reachable again; limits are global again")
            }
            UNKNOWN => tracing::debug!(prefix = %self.prefix, "rate limiting: connected to Redis"),
            _ => {}
        }
    }

    fn mark_down(&self, generation: Option<u64>, reason: &str) {
        self.retry_at.store(self.now_us().saturating_add(micros(self.options.backoff)), Ordering::Relaxed);
        if let Some(generation) = generation {
            self.forget(generation);
        }
        if self.health.swap(DOWN, Ordering::Relaxed) != DOWN {
            tracing::warn!(
                prefix = %self.prefix,
                error = reason,
                backoff = ?self.options.backoff,
                "rate limiting: Redis is unreachable; applying each policy's on_unavailable until it is back"
            );
        }
    }

    fn now_us(&self) -> u64 {
        micros(self.epoch.elapsed())
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
