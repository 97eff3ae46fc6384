//! What the gateway knows about each upstream instance and service beyond the registry:
//! requests in flight (for least-request balancing), the circuit breaker, passive outlier
//! ejection, and each service's round-robin position and retry budget.
//!
//! The maps are copy-on-write (`ArcSwap`): the data plane reads them without a lock and
//! only the first request to a new instance or service pays for an insertion. Each
//! breaker has its own small mutex, so instances never contend with each other.

use arc_swap::ArcSwap;
use axum::http::HeaderValue;
use pake_gateway_server::types as gw;
use pake_mesh_server::types;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// `service.instance-id`, as the admin API names an upstream.
pub fn upstream_id(service: &str, instance: Uuid) -> String {
    format!("{service}.{instance}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerMode {
    Closed,
    Open {
        until: Instant,
    },
    /// Probes admitted and not yet reported, and when the last of them gives up: a
    /// probe still unreported then is taken for lost and its slot for free.
    HalfOpen {
        in_flight: u64,
        until: Instant,
    },
}

/// What a breaker said to a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Refused,
    Admitted,
    /// Admitted as one of a half-open breaker's probes: its outcome decides the breaker,
    /// and one that ends without an outcome must give the slot back ([`Upstream::release`]).
    Probe,
}

/// A request in flight to an instance, counted for least-request balancing while held.
pub struct Busy<'a>(&'a AtomicU64);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct BreakerState {
    pub mode: BreakerMode,
    pub consecutive_failures: u64,
    window_started: Instant,
    window_requests: u64,
    window_failures: u64,
    pub opened_at: Option<chrono::DateTime<chrono::Utc>>,
    pub next_probe_at: Option<chrono::DateTime<chrono::Utc>>,
    pub total_requests: u64,
    pub total_failures: u64,
    /// Passive outlier ejection: consecutive 5xx answers and the current ejection.
    consecutive_5xx: u64,
    ejected_until: Option<Instant>,
    ejections: u32,
}

impl BreakerState {
    fn new() -> BreakerState {
        BreakerState {
            mode: BreakerMode::Closed,
            consecutive_failures: 0,
            window_started: Instant::now(),
            window_requests: 0,
            window_failures: 0,
            opened_at: None,
            next_probe_at: None,
            total_requests: 0,
            total_failures: 0,
            consecutive_5xx: 0,
            ejected_until: None,
            ejections: 0,
        }
    }

    pub fn failure_rate(&self) -> f64 {
        if self.window_requests == 0 { 0.0 } else { self.window_failures as f64 / self.window_requests as f64 }
    }
}

/// One upstream instance.
#[derive(Debug)]
pub struct Upstream {
    pub service: String,
    pub instance: Uuid,
    /// `instance` as text, as a try's span names it (made once, not once per try).
    pub instance_text: Arc<str>,
    /// `host:port`, also the key of the connection pools.
    pub address: Arc<str>,
    /// `address` as the `Host` header of requests sent to it.
    pub host: HeaderValue,
    pub in_flight: AtomicU64,
    pub breaker: Mutex<BreakerState>,
    /// True while the breaker is closed with no failure outstanding and no ejection: then
    /// admitting and recording a success touch only atomics, not the breaker's lock.
    quiet: AtomicBool,
    /// Successes recorded while quiet, folded into the breaker's counts under its lock.
    quiet_successes: AtomicU64,
}

/// What happened to one try, as the breaker and outlier detection count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The upstream answered 5xx.
    ServerError,
    /// No answer: refused, reset or timed out.
    Failure,
}

impl Upstream {
    /// Whether a request may go to this instance now. Open breakers refuse until their
    /// probe time; then the breaker half-opens and lets a few probes through.
    pub fn new(service: &str, instance: Uuid, address: String) -> Upstream {
        let address: Arc<str> = address.into();
        Upstream {
            service: service.to_string(),
            instance,
            instance_text: instance.to_string().into(),
            // The address comes from a validated registration; a value a header cannot
            // carry still gets a Host, and the connection attempt reports the address.
            host: HeaderValue::try_from(&*address).unwrap_or_else(|_| HeaderValue::from_static("upstream")),
            address,
            in_flight: AtomicU64::new(0),
            breaker: Mutex::new(BreakerState::new()),
            quiet: AtomicBool::new(true),
            quiet_successes: AtomicU64::new(0),
        }
    }

    /// Requests counted so far, including successes not yet folded in.
    pub fn total_requests(&self, state: &BreakerState) -> u64 {
        state.total_requests + self.quiet_successes.load(Ordering::Relaxed)
    }

    fn fold(&self, state: &mut BreakerState) {
        let successes = self.quiet_successes.swap(0, Ordering::Relaxed);
        state.total_requests += successes;
        state.window_requests += successes;
    }

    fn settle(&self, state: &BreakerState) {
        let quiet = state.mode == BreakerMode::Closed
            && state.consecutive_failures == 0
            && state.consecutive_5xx == 0
            && state.ejected_until.is_none_or(|until| until <= Instant::now());
        self.quiet.store(quiet, Ordering::Release);
    }

    /// Whether a try that gives up at `deadline` may go to this instance now.
    pub fn admit(&self, policy: &types::CircuitBreakerPolicy, honour_ejection: bool, deadline: Instant) -> Admission {
        if self.quiet.load(Ordering::Acquire) {
            return Admission::Admitted;
        }
        let mut state = self.breaker.lock().expect("breaker lock");
        let now = Instant::now();
        if honour_ejection && state.ejected_until.is_some_and(|until| until > now) {
            return Admission::Refused;
        }
        match state.mode {
            BreakerMode::Closed => Admission::Admitted,
            BreakerMode::Open { until } if until > now => Admission::Refused,
            BreakerMode::Open { .. } => {
                state.mode = BreakerMode::HalfOpen { in_flight: 1, until: deadline };
                Admission::Probe
            }
            BreakerMode::HalfOpen { in_flight, until } if in_flight < policy.half_open_max_requests.get() => {
                let until = if in_flight == 0 { deadline } else { until.max(deadline) };
                state.mode = BreakerMode::HalfOpen { in_flight: in_flight + 1, until };
                Admission::Probe
            }
            // Every probe's deadline has passed without a report: the slots are free.
            BreakerMode::HalfOpen { until, .. } if until <= now => {
                state.mode = BreakerMode::HalfOpen { in_flight: 1, until: deadline };
                Admission::Probe
            }
            BreakerMode::HalfOpen { .. } => Admission::Refused,
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn busy(&self) -> Busy<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(&self.in_flight)
    }

    /// Records a try's outcome and moves the breaker and outlier state accordingly.
    pub fn record(
        &self,
        outcome: Outcome,
        breaker: &types::CircuitBreakerPolicy,
        outliers: &types::OutlierDetectionPolicy,
    ) {
        if outcome == Outcome::Success && self.quiet.load(Ordering::Acquire) {
            self.quiet_successes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut state = self.breaker.lock().expect("breaker lock");
        self.fold(&mut state);
        let now = Instant::now();
        if now.duration_since(state.window_started) > Duration::from_secs(breaker.rate_window_seconds.get()) {
            state.window_started = now;
            state.window_requests = 0;
            state.window_failures = 0;
        }
        state.total_requests += 1;
        state.window_requests += 1;
        let failed = outcome != Outcome::Success;
        if failed {
            state.total_failures += 1;
            state.window_failures += 1;
            state.consecutive_failures += 1;
        } else {
            state.consecutive_failures = 0;
        }
        if outcome == Outcome::ServerError {
            state.consecutive_5xx += 1;
            if state.consecutive_5xx >= outliers.consecutive_5xx.get() {
                // Each ejection lasts longer than the last, as Envoy's outlier detection does.
                state.ejections = state.ejections.saturating_add(1);
                let seconds = outliers.base_ejection_seconds.get() * u64::from(state.ejections);
                state.ejected_until = Some(now + Duration::from_secs(seconds));
                state.consecutive_5xx = 0;
            }
        } else if outcome == Outcome::Success {
            state.consecutive_5xx = 0;
        }
        let open_for = Duration::from_secs(breaker.open_seconds.get());
        let trip = |state: &mut BreakerState| {
            state.mode = BreakerMode::Open { until: now + open_for };
            let wall = chrono::Utc::now();
            state.opened_at = Some(wall);
            state.next_probe_at = Some(wall + chrono::Duration::from_std(open_for).unwrap_or_default());
        };
        match state.mode {
            BreakerMode::HalfOpen { .. } if failed => trip(&mut state),
            BreakerMode::HalfOpen { .. } => {
                state.mode = BreakerMode::Closed;
                state.opened_at = None;
                state.next_probe_at = None;
                state.window_requests = 0;
                state.window_failures = 0;
            }
            BreakerMode::Closed if failed => {
                let by_count = state.consecutive_failures >= breaker.failure_threshold.get();
                let by_rate = state.window_requests >= breaker.minimum_requests.get()
                    && state.failure_rate() >= breaker.failure_rate_threshold;
                if by_count || by_rate {
                    trip(&mut state);
                }
            }
            _ => {}
        }
        self.settle(&state);
    }

    /// Gives back a probe's admission when its try ended without saying anything about
    /// the instance (cancelled, or the client's body failed): the half-open breaker's slot
    /// is free for another probe; nothing is counted.
    pub fn release(&self) {
        if self.quiet.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.breaker.lock().expect("breaker lock");
        if let BreakerMode::HalfOpen { in_flight, until } = state.mode {
            state.mode = BreakerMode::HalfOpen { in_flight: in_flight.saturating_sub(1), until };
        }
    }

    /// Closes the breaker and forgets ejections (the admin API's reset).
    pub fn reset(&self) {
        let mut state = self.breaker.lock().expect("breaker lock");
        self.fold(&mut state);
        *state = BreakerState {
            total_requests: state.total_requests,
            total_failures: state.total_failures,
            ..BreakerState::new()
        };
        self.settle(&state);
    }

    /// Whether passive outlier detection has ejected this instance for now.
    pub fn is_ejected(&self) -> bool {
        if self.quiet.load(Ordering::Acquire) {
            return false;
        }
        let state = self.breaker.lock().expect("breaker lock");
        state.ejected_until.is_some_and(|until| until > Instant::now())
    }

    /// Seconds until this instance may be tried again, when it is refused now.
    pub fn retry_after(&self) -> u64 {
        let state = self.breaker.lock().expect("breaker lock");
        let now = Instant::now();
        let until = match (state.mode, state.ejected_until) {
            (BreakerMode::Open { until }, _) => Some(until),
            (_, Some(until)) => Some(until),
            _ => None,
        };
        until.map(|u| u.saturating_duration_since(now).as_secs().max(1)).unwrap_or(1)
    }

    pub fn state(&self) -> gw::CircuitState {
        if self.quiet.load(Ordering::Acquire) {
            return gw::CircuitState::Closed;
        }
        let state = self.breaker.lock().expect("breaker lock");
        match state.mode {
            BreakerMode::Closed => gw::CircuitState::Closed,
            BreakerMode::Open { until } if until > Instant::now() => gw::CircuitState::Open,
            BreakerMode::Open { .. } | BreakerMode::HalfOpen { .. } => gw::CircuitState::HalfOpen,
        }
    }
}

/// Per service: the round-robin position and the retry budget, all atomics so that
/// requests to one service never queue on a lock.
#[derive(Debug)]
pub struct ServiceState {
    pub next: AtomicUsize,
    /// Which budget window the counts belong to.
    window: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Retries are allowed while they stay within this share of a window's requests, plus a
/// small floor so that a quiet service can still retry a single failure.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
const BUDGET_FLOOR: u64 = 3;

fn budget_window() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() / BUDGET_WINDOW.as_secs()
}

impl ServiceState {
    fn new() -> ServiceState {
        ServiceState {
            next: AtomicUsize::new(0),
            window: AtomicU64::new(budget_window()),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Starts a new window when the current one is over. Counts racing with the reset may
    /// land in either window, which a budget can afford.
    fn roll(&self) {
        let now = budget_window();
        if self.window.load(Ordering::Relaxed) != now && self.window.swap(now, Ordering::Relaxed) != now {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a request toward the retry budget.
    pub fn count_request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if it has one: retries never multiply an outage.
    pub fn take_retry(&self, percent: u64) -> bool {
        self.roll();
        let allowed = BUDGET_FLOOR.max(self.requests.load(Ordering::Relaxed) * percent / 100);
        self.retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |taken| (taken < allowed).then_some(taken + 1))
            .is_ok()
    }
}

/// Every upstream and service the gateway has sent traffic to.
#[derive(Default)]
pub struct Upstreams {
    // Looked up on every proxied request, by ids and names from the registry: a fast hasher.
    instances: ArcSwap<HashMap<Uuid, Arc<Upstream>, foldhash::fast::RandomState>>,
    services: ArcSwap<HashMap<String, Arc<ServiceState>, foldhash::fast::RandomState>>,
    insert: Mutex<()>,
}

impl Upstreams {
    /// The instance with `id`, if the gateway has sent it traffic.
    pub fn get(&self, id: Uuid) -> Option<Arc<Upstream>> {
        self.instances.load().get(&id).cloned()
    }

    pub fn instance(&self, service: &str, instance: &types::Instance) -> Arc<Upstream> {
        if let Some(found) = self.instances.load().get(&instance.id) {
            return found.clone();
        }
        let _guard = self.insert.lock().expect("insert lock");
        let current = self.instances.load_full();
        if let Some(found) = current.get(&instance.id) {
            return found.clone();
        }
        let host = instance.address.as_str();
        // An IPv6 literal is bracketed in `host:port` form.
        let address = if host.contains(':') {
            format!("[{host}]:{}", instance.port)
        } else {
            format!("{host}:{}", instance.port)
        };
        let created = Arc::new(Upstream::new(service, instance.id, address));
        let mut next = (*current).clone();
        next.insert(instance.id, created.clone());
        self.instances.store(Arc::new(next));
        created
    }

    pub fn service(&self, name: &str) -> Arc<ServiceState> {
        if let Some(found) = self.services.load().get(name) {
            return found.clone();
        }
        let _guard = self.insert.lock().expect("insert lock");
        let current = self.services.load_full();
        if let Some(found) = current.get(name) {
            return found.clone();
        }
        let created = Arc::new(ServiceState::new());
        let mut next = (*current).clone();
        next.insert(name.to_string(), created.clone());
        self.services.store(Arc::new(next));
        created
    }

    /// Every instance seen so far, sorted by upstream id.
    pub fn all(&self) -> Vec<Arc<Upstream>> {
        let mut all: Vec<Arc<Upstream>> = self.instances.load().values().cloned().collect();
        all.sort_by_key(|u| upstream_id(&u.service, u.instance));
        all
    }

    pub fn find(&self, id: &str) -> Option<Arc<Upstream>> {
        let (service, instance) = id.rsplit_once('.')?;
        let instance: Uuid = instance.parse().ok()?;
        self.instances.load().get(&instance).filter(|u| u.service == service).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policies(threshold: u64) -> (types::CircuitBreakerPolicy, types::OutlierDetectionPolicy) {
        let breaker = serde_json::from_value(json!({
            "failure_threshold": threshold, "failure_rate_threshold": 0.9, "minimum_requests": 100,
            "rate_window_seconds": 30, "open_seconds": 1, "half_open_max_requests": 1
        }))
        .unwrap();
        let outliers = serde_json::from_value(json!({
            "consecutive_5xx": 100, "interval_seconds": 10, "base_ejection_seconds": 30, "max_ejection_percent": 50
        }))
        .unwrap();
        (breaker, outliers)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn admitted(admission: Admission) -> bool {
        admission != Admission::Refused
    }

    fn upstream() -> Upstream {
        Upstream::new("svc", Uuid::new_v4(), "127.0.0.1:1".into())
    }

    #[test]
    fn the_breaker_opens_half_opens_and_closes() {
        let (breaker, outliers) = policies(3);
        let up = upstream();
        for _ in 0..2 {
            assert!(admitted(up.admit(&breaker, true, soon())));
            up.record(Outcome::Failure, &breaker, &outliers);
        }
        assert_eq!(up.state(), gw::CircuitState::Closed);
        assert!(admitted(up.admit(&breaker, true, soon())));
        up.record(Outcome::Failure, &breaker, &outliers);
        assert_eq!(up.state(), gw::CircuitState::Open);
        assert!(!admitted(up.admit(&breaker, true, soon())), "an open breaker refuses");
        // After open_seconds one probe is let through; a second waits for its result.
        up.breaker.lock().unwrap().mode = BreakerMode::Open { until: Instant::now() };
        assert!(admitted(up.admit(&breaker, true, soon())));
        assert!(!admitted(up.admit(&breaker, true, soon())));
        assert_eq!(up.state(), gw::CircuitState::HalfOpen);
        up.record(Outcome::Failure, &breaker, &outliers);
        assert_eq!(up.state(), gw::CircuitState::Open, "a failed probe opens it again");
        up.breaker.lock().unwrap().mode = BreakerMode::Open { until: Instant::now() };
        assert!(admitted(up.admit(&breaker, true, soon())));
        up.record(Outcome::Success, &breaker, &outliers);
        assert_eq!(up.state(), gw::CircuitState::Closed, "a good probe closes it");
    }

    #[test]
    fn a_probe_that_never_reports_frees_its_slot_when_given_back_or_past_its_deadline() {
        let (breaker, outliers) = policies(1);
        let up = upstream();
        up.record(Outcome::Failure, &breaker, &outliers);
        up.breaker.lock().unwrap().mode = BreakerMode::Open { until: Instant::now() };
        assert_eq!(up.admit(&breaker, true, soon()), Admission::Probe);
        assert_eq!(up.admit(&breaker, true, soon()), Admission::Refused, "one probe at a time");
        up.release();
        assert_eq!(up.admit(&breaker, true, soon()), Admission::Probe, "a given-back slot admits another probe");
        // A probe lost without a trace (its deadline already past): the next try probes.
        up.release();
        assert_eq!(up.admit(&breaker, true, Instant::now()), Admission::Probe);
        assert_eq!(up.admit(&breaker, true, soon()), Admission::Probe, "the lost probe's slot is free");
        assert_eq!(up.admit(&breaker, true, soon()), Admission::Refused);
        up.record(Outcome::Success, &breaker, &outliers);
        assert_eq!(up.state(), gw::CircuitState::Closed);
    }

    #[test]
    fn busy_counts_while_held() {
        let up = upstream();
        let first = up.busy();
        {
            let _second = up.busy();
            assert_eq!(up.in_flight.load(Ordering::Relaxed), 2);
        }
        drop(first);
        assert_eq!(up.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_retry_budget_bounds_retries_to_a_share_of_requests() {
        let service = ServiceState::new();
        for _ in 0..100 {
            service.count_request();
        }
        let granted = (0..100).filter(|_| service.take_retry(20)).count();
        assert_eq!(granted, 20);
    }
}
