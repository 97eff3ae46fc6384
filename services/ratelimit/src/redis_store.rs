//! Redis-backed decisions: one round trip per decision, bounded in time, with a short
//! backoff after a failure so that an outage costs requests no latency.
//!
//! GCRA decisions are gathered per thread: while the thread's previous batch is out (or,
//! with none out, for one turn of its event loop) the other requests that thread is
//! serving add theirs; then one EVALSHA carries them all, one entry per key with its count
//! of decisions, and each request gets its own answer. Every decision still takes exactly
//! one atomic round trip (the script admits them in order, on the server's clock), and
//! Redis parses, schedules and answers one command for many.
//!
//! Plain TCP servers get the GCRA batches over [`crate::resp`]. Otherwise, and for the
//! sliding window, the connection is one multiplexed connection per thread managed
//! here rather than by `redis::aio::ConnectionManager`: after a failure it is dropped, no
//! request touches Redis until the backoff has passed, and then one request probes with a
//! fresh, time-bounded connection attempt. Every other request falls back meanwhile, so
//! recovery needs no restart and costs at most one bounded attempt per backoff.

use crate::algo::{self, Outcome, Rates, WEIGHT_ONE};
use crate::{Algorithm, Error, RedisOptions};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::time::timeout_at;

const GCRA_LUA: &str = include_str!("gcra.lua");
const SLIDING_WINDOW_LUA: &str = include_str!("sliding_window.lua");

/// Redis calls' deadlines are rounded up to a multiple of this (see `RedisStore::deadline`).
const DEADLINE_STEP: Duration = Duration::from_millis(16);

/// Health as last observed; only transitions are logged.
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

pub(crate) struct RedisStore {
    client: Client,
    /// Plain TCP servers get the GCRA batches over [`crate::resp`]; others `redis`'s client.
    endpoint: Option<crate::resp::Endpoint>,
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
    round_trips: AtomicU64,
}

// Connections by store id, one per thread: a connection's I/O runs on the runtime of the
// thread that opened it, so a gateway worker's decisions never hop to another thread and
// back (each worker is its own single-threaded runtime). Each entry carries its
// generation, so that a failure forgets exactly the connection that failed.
thread_local! {
    static CONNECTIONS: RefCell<HashMap<u64, (u64, MultiplexedConnection)>> = RefCell::new(HashMap::new());
    /// The batch each store is gathering on this thread, by store id.
    static GATHERING: RefCell<HashMap<u64, Arc<Batch>>> = RefCell::new(HashMap::new());
    /// When this thread's latest batch for each store is done (sent and answered, or
    /// given up): the next batch is sent after it, and gathers meanwhile.
    static LATEST: RefCell<HashMap<u64, watch::Receiver<bool>>> = RefCell::new(HashMap::new());
}

/// GCRA decisions gathered for one EVALSHA: open (`Some`) until its leader takes them. The
/// leader may resume on another thread (a multi-threaded runtime moves tasks), so the
/// batch is reached through its own handle, not through the thread it started on.
#[derive(Default)]
struct Batch {
    waiting: Mutex<Option<Vec<Waiting>>>,
}

impl Batch {
    /// Takes the decisions, closing the batch to newcomers.
    fn take(&self) -> Vec<Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).take().unwrap_or_default()
    }
}

/// A decision waiting in a batch: its key and rates, and where its answer goes (none for
/// the request that leads the batch).
struct Waiting {
    key: String,
    rates: Rates,
    reply: Option<oneshot::Sender<Option<Outcome>>>,
}

/// Held by a batch's leader until it has taken the batch. Dropped before that (its
/// request was cancelled), it closes the batch: the others' answers then fall back, rather
/// than wait for a leader that is gone.
struct Leading {
    batch: Arc<Batch>,
    taken: bool,
}

impl Drop for Leading {
    fn drop(&mut self) {
        if !self.taken {
            drop(self.batch.take());
        }
    }
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
        let info = client.get_connection_info();
        let endpoint = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => Some(crate::resp::Endpoint {
                address: if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") },
                username: info.redis_settings().username().map(str::to_owned),
                password: info.redis_settings().password().map(str::to_owned),
                db: info.redis_settings().db(),
            }),
            _ => None,
        };
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout));
        Ok(RedisStore {
            client,
            endpoint,
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
            round_trips: AtomicU64::new(0),
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

    /// EVALSHA calls made, each carrying one or more decisions.
    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Connects and loads the scripts ahead of the first request.
    pub(crate) async fn warm_up(&self) {
        let deadline = self.deadline();
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
        match algorithm {
            Algorithm::Gcra => self.gcra_gathered(key, rates).await,
            Algorithm::SlidingWindow => {
                // Boxed, as a GCRA batch's round trip is: only this branch needs that state.
                let mut first = Box::pin(self.sliding_window(key, rates)).await;
                // A connection that broke while idle (Redis restarted, a proxy dropped it) is
                // only found out on use. One fresh connection is tried at once, so that a
                // Redis that is back does not cost a backoff of local decisions.
                if let Err(Failure::Broken { generation, .. }) = &first {
                    self.forget(*generation);
                    first = Box::pin(self.sliding_window(key, rates)).await;
                }
                self.settle(first)
            }
        }
    }

    /// Joins this thread's gathering batch, or starts one and leads it.
    async fn gcra_gathered(&self, key: &str, rates: &Rates) -> Option<Outcome> {
        let mut full = String::with_capacity(self.prefix.len() + 8 + key.len());
        full.push_str(&self.prefix);
        full.push_str("rl:gcra:");
        full.push_str(key);
        let key = full;
        let rates = *rates;
        let joined = GATHERING.with_borrow_mut(|gathering| {
            if let Some(open) = gathering.get(&self.id) {
                let mut waiting = open.waiting.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(waiting) = waiting.as_mut() {
                    let (reply, answer) = oneshot::channel();
                    waiting.push(Waiting { key, rates, reply: Some(reply) });
                    return Ok(answer);
                }
            }
            let own = Waiting { key, rates, reply: None };
            let batch = Arc::new(Batch { waiting: Mutex::new(Some(vec![own])) });
            gathering.insert(self.id, Arc::clone(&batch));
            Err(batch)
        });
        let batch = match joined {
            // The leader always answers or drops the sender (then: fall back).
            Ok(answer) => return answer.await.ok().flatten(),
            Err(batch) => batch,
        };
        let mut leading = Leading { batch, taken: false };
        // Done when this batch is (or when its leader is dropped: then the sender is).
        let (done, latest) = watch::channel(false);
        let previous = LATEST.with_borrow_mut(|all| all.insert(self.id, latest));
        // While this thread's previous batch is still out, this one gathers: one batch in
        // flight per thread, each as large as the traffic makes it. Then one more turn of
        // the event loop lets the requests that became ready meanwhile join too. That turn
        // costs a poll of the sockets (a system call) per round trip, and makes the batches
        // of a busy thread about a third larger (10.7 → 13–14 decisions per round trip in
        // `cargo xtask bench gateway --redis`), so Redis does that much less work per
        // decision: what bounds how many replicas one Redis serves.
        if let Some(mut previous) = previous
            && !*previous.borrow()
        {
            drop(previous.wait_for(|done| *done).await);
        }
        tokio::task::yield_now().await;
        let batch = leading.batch.take();
        leading.taken = true;
        if !self.backoff_left().is_zero() {
            // The previous batch found Redis down: this one falls back at once.
            let _ = done.send(true);
            return None;
        }
        // Boxed: the round trip's state is only needed by the batch's leader, and would
        // otherwise enlarge every request's future.
        let mut decided = Box::pin(self.gcra(&batch)).await;
        if let Err(Failure::Broken { generation, .. }) = &decided {
            self.forget(*generation);
            decided = Box::pin(self.gcra(&batch)).await;
        }
        let decided = self.settle(decided);
        let _ = done.send(true);
        let mut own = None;
        for (index, waiting) in batch.into_iter().enumerate() {
            let outcome = decided.as_ref().and_then(|outcomes| outcomes.get(index).copied());
            match waiting.reply {
                Some(reply) => {
                    let _ = reply.send(outcome);
                }
                None => own = outcome,
            }
        }
        own
    }

    /// Marks Redis up or down by how a call went; its result, if it succeeded.
    fn settle<T>(&self, result: Result<T, Failure>) -> Option<T> {
        match result {
            Ok(value) => {
                self.mark_up();
                Some(value)
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

    /// One EVALSHA of the GCRA script for every decision in `batch`, in order. Redis is
    /// sent each key once, with how many decisions it carries, and answers the TAT the
    /// first of them met; each decision is then replayed from it with [`algo::gcra`], the
    /// arithmetic the script itself uses to count the admitted ones.
    async fn gcra(&self, batch: &[Waiting]) -> Result<Vec<Outcome>, Failure> {
        // Decisions counted per key (and rates, should a policy change mid-batch), in
        // order of first appearance; `group_of` maps each decision to its entry.
        let mut groups: Vec<(&str, Rates, u64)> = Vec::new();
        let mut group_of = Vec::with_capacity(batch.len());
        let mut index: HashMap<(&str, u64, u64), usize> = HashMap::new();
        for waiting in batch {
            let (interval, tolerance) = (waiting.rates.interval_us, waiting.rates.tolerance_us);
            let group = *index.entry((waiting.key.as_str(), interval, tolerance)).or_insert_with(|| {
                groups.push((waiting.key.as_str(), waiting.rates, 0));
                groups.len() - 1
            });
            groups[group].2 += 1;
            group_of.push(group);
        }
        let reply: Vec<i64> = match &self.endpoint {
            Some(endpoint) => {
                // The numbers as text, in one buffer.
                let mut text = Vec::with_capacity(groups.len() * 32);
                let mut ends = Vec::with_capacity(groups.len() * 3);
                let mut digits = itoa::Buffer::new();
                for (_, rates, count) in &groups {
                    for number in [rates.interval_us, rates.tolerance_us, *count] {
                        text.extend_from_slice(digits.format(number).as_bytes());
                        ends.push(text.len());
                    }
                }
                let args: Vec<&[u8]> =
                    ends.iter().scan(0, |start, &end| Some(&text[std::mem::replace(start, end)..end])).collect();
                let keys: Vec<&[u8]> = groups.iter().map(|(key, ..)| key.as_bytes()).collect();
                let deadline = self.deadline();
                self.round_trips.fetch_add(1, Ordering::Relaxed);
                let script = (self.gcra.get_hash(), GCRA_LUA);
                crate::resp::eval_integers(self.id, endpoint, script, &keys, &args, deadline)
                    .await
                    .map_err(|error| Failure::Failed { generation: None, reason: error.reason() })?
            }
            None => {
                let mut invocation = self.gcra.prepare_invoke();
                for (key, rates, count) in &groups {
                    invocation.key(*key).arg(rates.interval_us).arg(rates.tolerance_us).arg(*count);
                }
                self.invoke(&invocation).await?
            }
        };
        let malformed = || Failure::Failed {
            generation: None,
            reason: format!("GCRA script answered {reply:?} for {} keys", groups.len()),
        };
        let [now, first_tats @ ..] = reply.as_slice() else { return Err(malformed()) };
        let now = u64::try_from(*now).map_err(|_| malformed())?;
        if first_tats.len() != groups.len() {
            return Err(malformed());
        }
        let mut tats = first_tats
            .iter()
            .map(|&tat| u64::try_from(tat).ok())
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(malformed)?;
        Ok(group_of
            .into_iter()
            .map(|group| {
                let (outcome, admitted_tat) = algo::gcra(now, Some(tats[group]), &groups[group].1);
                if let Some(tat) = admitted_tat {
                    tats[group] = tat;
                }
                outcome
            })
            .collect())
    }

    async fn sliding_window(&self, key: &str, rates: &Rates) -> Result<Outcome, Failure> {
        let mut invocation = self.sliding_window.key(format!("{}rl:sw:{key}", self.prefix));
        invocation.arg(rates.period_ms).arg(rates.quota).arg(WEIGHT_ONE);
        let (allowed, remaining, reset_ms, retry_ms): (i64, i64, i64, i64) = self.invoke(&invocation).await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(Outcome {
            allowed: allowed == 1,
            remaining: count(remaining),
            reset_after: Duration::from_millis(count(reset_ms)),
            retry_after: Duration::from_millis(count(retry_ms)),
        })
    }

    /// Runs a script on this thread's connection, within the timeout.
    async fn invoke<T: redis::FromRedisValue>(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<T, Failure> {
        let deadline = self.deadline();
        let (generation, mut connection) = self.connection(deadline).await?;
        let failed = |reason: String| Failure::Failed { generation: Some(generation), reason };
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        // EVALSHA; the script is loaded with each new connection, and `invoke_async`
        // loads it again should the server have lost it (SCRIPT FLUSH).
        timeout_at(deadline, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| failed("timed out".into()))?
            .map_err(|e| {
                if !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped()) {
                    Failure::Broken { generation, reason: e.to_string() }
                } else {
                    failed(e.to_string())
                }
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

    /// When a call started now must have been answered: the timeout from now, rounded up
    /// to [`DEADLINE_STEP`]. Successive calls then share a timer tick; an earlier timer
    /// than the event loop last planned for would make tokio wake its own loop through a
    /// system call, once per round trip.
    fn deadline(&self) -> tokio::time::Instant {
        let step = micros(DEADLINE_STEP);
        let due = micros(self.epoch.elapsed() + self.options.timeout).div_ceil(step) * step;
        tokio::time::Instant::from_std(self.epoch + Duration::from_micros(due))
    }

    fn now_us(&self) -> u64 {
        micros(self.epoch.elapsed())
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_url_is_refused_with_its_reason() {
        for (url, reason) in [("rediss://127.0.0.1:6379/", "TLS"), ("http://127.0.0.1/", "did not parse")] {
            let error = RedisStore::new(url, "t:", RedisOptions::default()).err().expect(url).to_string();
            assert!(error.starts_with("invalid Redis URL: ") && error.contains(reason), "{url}: {error}");
        }
    }

    #[tokio::test]
    async fn deadlines_are_the_timeout_rounded_up_to_the_step() {
        let options = RedisOptions { timeout: Duration::from_millis(100), ..RedisOptions::default() };
        let store = RedisStore::new("redis://127.0.0.1:1/", "t:", options).expect("store");
        let step = micros(DEADLINE_STEP);
        for _ in 0..40 {
            let earliest = tokio::time::Instant::now() + Duration::from_millis(100);
            let deadline = store.deadline();
            let latest = tokio::time::Instant::now() + Duration::from_millis(100) + DEADLINE_STEP;
            assert!(earliest <= deadline && deadline <= latest, "{deadline:?} outside [{earliest:?}, {latest:?}]");
            let since_epoch = micros(deadline.into_std() - store.epoch);
            assert_eq!(since_epoch % step, 0, "a deadline off the step: {since_epoch} µs");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}
