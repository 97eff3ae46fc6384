//! A request's tries: which instance (balancing, breakers, outlier ejection), how long,
//! whether another follows (retry conditions and budget), and how each one is accounted
//! (breaker outcomes, failed-try and retry metrics). The try loop is [`Tries::run`]; both
//! transports call it, each sending a try its own way.

use crate::connections::SendFailure;
use crate::headers::random;
use crate::plane_metrics::UpstreamLabels;
use crate::proxy::{DataPlane, error};
use crate::spans::RequestSpans;
use crate::upstream::{Admission, Outcome, Upstream};
use axum::http::{Method, StatusCode};
use pake_api_runtime::ApiError;
use pake_gateway_server::types as gw;
use pake_mesh_server::types as mesh;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Milliseconds since the Unix epoch at `now`, for instance expiry, read from the wall
/// clock at most once a second per thread and advanced by the monotonic clock between
/// reads (the request already read it), so expiry is exact to well within its 1 s bound.
pub(crate) fn wall_clock_ms(now: Instant) -> i64 {
    thread_local! {
        static ANCHOR: std::cell::Cell<Option<(Instant, i64)>> = const { std::cell::Cell::new(None) };
    }
    ANCHOR.with(|anchor| {
        if let Some((at, ms)) = anchor.get()
            && let Some(since) = now.checked_duration_since(at)
            && since < Duration::from_secs(1)
        {
            return ms + since.as_millis() as i64;
        }
        let ms = chrono::Utc::now().timestamp_millis();
        anchor.set(Some((now, ms)));
        ms
    })
}

/// Most tries a request can make: the first and at most ten retries (the contract's bound).
const MAX_TRIES: usize = 11;

/// Picks an instance the breaker admits, by the service's balancing algorithm, avoiding
/// instances this request already tried while others remain.
pub(crate) fn pick(
    plane: &DataPlane,
    service: &str,
    state: &crate::upstream::ServiceState,
    candidates: &[&mesh::Instance],
    policy: &mesh::TrafficPolicy,
    tried: &[uuid::Uuid],
    deadline: Instant,
) -> Result<(Arc<Upstream>, mesh::InstanceScheme, bool), u64> {
    // The pool: untried candidates, or all of them once every one has been tried. A first
    // try (nothing tried) uses the candidates as they are.
    let untried;
    let pool: &[&mesh::Instance] = if tried.is_empty() || candidates.iter().all(|i| tried.contains(&i.id)) {
        candidates
    } else {
        untried = candidates.iter().copied().filter(|i| !tried.contains(&i.id)).collect::<Vec<_>>();
        &untried
    };
    let upstreams: Vec<Arc<Upstream>> = pool.iter().map(|i| plane.upstreams.instance(service, i)).collect();
    let n = pool.len();
    // The preferred instance; the others follow it in order as fallbacks.
    let first = match policy.load_balancing {
        mesh::LoadBalancing::RoundRobin => state.next.fetch_add(1, Ordering::Relaxed) % n,
        mesh::LoadBalancing::LeastRequest => {
            // Two distinct random choices, the less loaded one.
            let a = (random() % n as u64) as usize;
            let b = if n > 1 { (a + 1 + (random() % (n as u64 - 1)) as usize) % n } else { a };
            if upstreams[b].in_flight.load(Ordering::Relaxed) < upstreams[a].in_flight.load(Ordering::Relaxed) {
                b
            } else {
                a
            }
        }
        mesh::LoadBalancing::Weighted => {
            let total: u64 = pool.iter().map(|i| i.weight.get()).sum();
            let mut ticket = random() % total.max(1);
            let mut first = 0;
            for (k, instance) in pool.iter().enumerate() {
                if ticket < instance.weight.get() {
                    first = k;
                    break;
                }
                ticket -= instance.weight.get();
            }
            first
        }
    };
    // Round robin walks on from its start; the others fall back in list order.
    let order = |k: usize| match policy.load_balancing {
        mesh::LoadBalancing::RoundRobin => (first + k) % n,
        _ if k == 0 => first,
        _ if k <= first => k - 1,
        _ => k,
    };
    // Outlier ejection may take out at most max_ejection_percent of the instances; beyond
    // that it is ignored, so that a bad moment everywhere does not empty the service.
    let ejected = upstreams.iter().filter(|u| u.is_ejected()).count();
    let honour_ejection = ejected * 100 <= n * policy.outlier_detection.max_ejection_percent as usize;
    for k in (0..n).map(order) {
        match upstreams[k].admit(&policy.circuit_breaker, honour_ejection, deadline) {
            Admission::Refused => continue,
            Admission::Admitted => return Ok((upstreams[k].clone(), pool[k].scheme, false)),
            Admission::Probe => return Ok((upstreams[k].clone(), pool[k].scheme, true)),
        }
    }
    Err(upstreams.iter().map(|u| u.retry_after()).min().unwrap_or(1))
}

/// Whether requests with `method` may be sent more than once (RFC 9110 §9.2.2; the
/// contract's retry rule): GET, HEAD, PUT, DELETE and OPTIONS.
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS)
}

/// How a transport sends one try (the request as it stands, to the try's instance).
pub(crate) trait Transport {
    type Answer: Answered;

    fn send(&mut self, attempt: &Try) -> impl Future<Output = Result<Self::Answer, SendFailure>> + Send;
}

/// An upstream's answer, as far as the tries need to see it.
pub(crate) trait Answered {
    fn status(&self) -> StatusCode;
}

impl<B> Answered for axum::http::Response<B> {
    fn status(&self) -> StatusCode {
        self.status()
    }
}

/// Why a try failed without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryFailure {
    Connect,
    /// The TLS handshake with an `https` instance failed.
    Tls,
    Reset,
    Timeout,
}

impl TryFailure {
    /// A try's answer, or why it got none (logged for `service`): the send failed, or the
    /// try's deadline passed first.
    fn check<T>(
        sent: Result<Result<T, SendFailure>, tokio::time::error::Elapsed>,
        service: &str,
    ) -> Result<T, TryFailure> {
        match sent {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(SendFailure::Connect(reason))) => {
                tracing::debug!(%reason, service, "upstream try failed to connect");
                Err(TryFailure::Connect)
            }
            Ok(Err(SendFailure::Tls(reason))) => {
                // A configuration problem (a certificate, a CA not trusted), not a passing one.
                tracing::warn!(%reason, service, "TLS handshake with an upstream instance failed");
                Err(TryFailure::Tls)
            }
            Ok(Err(SendFailure::Failed(reason))) => {
                tracing::debug!(%reason, service, "upstream try failed");
                Err(TryFailure::Reset)
            }
            Err(_) => Err(TryFailure::Timeout),
        }
    }

    fn label(self) -> &'static str {
        match self {
            TryFailure::Connect => "connect",
            TryFailure::Tls => "tls",
            TryFailure::Reset => "reset",
            TryFailure::Timeout => "timeout",
        }
    }

    fn condition(self) -> gw::RetryCondition {
        match self {
            TryFailure::Connect | TryFailure::Tls => gw::RetryCondition::ConnectFailure,
            TryFailure::Reset => gw::RetryCondition::Reset,
            TryFailure::Timeout => gw::RetryCondition::Timeout,
        }
    }
}

/// One try's instance and bounds.
pub(crate) struct Try {
    pub upstream: Arc<Upstream>,
    pub scheme: mesh::InstanceScheme,
    /// When the try started (the request's start for the first one).
    pub now: Instant,
    /// When the try gives up: its per-try timeout or the route's deadline.
    pub deadline: Instant,
    /// Whether a retry may follow this try (so its request must stay available).
    pub may_retry: bool,
    /// The `traceparent` the instance receives: this try's span as the parent.
    pub traceparent: [u8; 55],
    /// Whether this try holds one of a half-open breaker's probe slots that no outcome
    /// has settled yet: dropped so (cancelled, abandoned), it gives the slot back.
    probe: bool,
}

impl Try {
    /// Records the try's outcome with its instance (which settles a probe).
    fn record(&mut self, outcome: Outcome, policy: &mesh::TrafficPolicy) {
        self.probe = false;
        self.upstream.record(outcome, &policy.circuit_breaker, &policy.outlier_detection);
    }
}

impl Drop for Try {
    fn drop(&mut self) {
        if self.probe {
            self.upstream.release();
        }
    }
}

/// A request's tries: the service's instances, its traffic policy and the route's retry
/// rules, shared by every way the gateway speaks to upstreams. The caller sends each
/// [`Try`] its own way and reports how it went; this decides whether another follows.
pub(crate) struct Tries<'a> {
    plane: &'a DataPlane,
    service_name: &'a str,
    candidates: Vec<&'a mesh::Instance>,
    policy: &'a mesh::TrafficPolicy,
    state: Arc<crate::upstream::ServiceState>,
    retry: &'a gw::RetryPolicy,
    max_retries: u64,
    deadline: Instant,
    tried: [uuid::Uuid; MAX_TRIES],
    attempt: u64,
}

impl<'a> Tries<'a> {
    /// The healthy, unexpired instances of `service`, the route's service as the registry
    /// snapshot has it (none: not registered); `retryable` says whether the request may be
    /// sent more than once (idempotent, no body).
    pub fn new(
        plane: &'a DataPlane,
        route: &'a gw::Route,
        service: Option<&'a pake_registry::model::ServiceData>,
        started: Instant,
        retryable: bool,
    ) -> Result<Tries<'a>, ApiError> {
        let service_name = route.service.as_str();
        let no_instances = || {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_upstream",
                format!("{service_name} has no healthy instance"),
            )
            .with_retry_after(1)
        };
        let service = service.ok_or_else(no_instances)?;
        let now_ms = wall_clock_ms(started);
        let candidates: Vec<&mesh::Instance> = service
            .instances
            .iter()
            .filter(|record| !record.is_expired(now_ms) && record.instance.status == mesh::InstanceStatus::Passing)
            .map(|record| &record.instance)
            .collect();
        if candidates.is_empty() {
            return Err(no_instances());
        }
        let state = plane.upstreams.service(service_name);
        state.count_request();
        let retry = &route.retry;
        let max_retries = if retryable { retry.max_attempts.clamp(0, MAX_TRIES as i64 - 1) as u64 } else { 0 };
        Ok(Tries {
            plane,
            service_name,
            candidates,
            policy: &service.policy,
            state,
            retry,
            max_retries,
            deadline: started + Duration::from_millis(route.timeout_ms.get()),
            tried: [uuid::Uuid::nil(); MAX_TRIES],
            attempt: 0,
        })
    }

    /// Makes the request's tries, each sent by `send` the transport's way, until one gets
    /// an answer to relay (returned with its try, whose outcome the caller settles once the
    /// body has been relayed: [`Tries::settled`], [`Tries::broke_off`] or a [`Verdict`]), or
    /// no further try may follow (the error to answer with). Each try is counted in flight
    /// and bounded by its deadline here; a failure `client_fault` lays at the client's door
    /// ends the tries unrecorded, with its error. Each try has its span in `spans` (ended
    /// with its outcome), whose id its instance receives as the parent; the error that
    /// ends the tries is recorded there too, and the instance whose answer is relayed
    /// ([`RequestSpans::answering_instance`], which the request's sample carries).
    pub async fn run<T: Transport>(
        &mut self,
        started: Instant,
        transport: &mut T,
        spans: &mut RequestSpans<'_>,
        client_fault: impl Fn(TryFailure) -> Option<ApiError>,
    ) -> Result<(Try, T::Answer), ApiError> {
        let refused = |refused: ApiError, spans: &mut RequestSpans<'_>| {
            spans.refused("upstream", refused.code());
            refused
        };
        loop {
            let mut attempt = self.next(started).map_err(|e| refused(e, spans))?;
            let span = spans.try_started(&attempt.upstream);
            attempt.traceparent = span.traceparent;
            // Counted in flight until the answer's head, or the try's end however it ends
            // (the future dropped included).
            let busy = attempt.upstream.busy();
            let sent = tokio::time::timeout_at(attempt.deadline.into(), transport.send(&attempt)).await;
            drop(busy);
            let failure = match TryFailure::check(sent, self.service_name) {
                Ok(answer) => {
                    let status = answer.status();
                    span.answered(status);
                    if self.answered(&mut attempt, status) {
                        continue;
                    }
                    spans.answered_by(attempt.upstream.instance);
                    return Ok((attempt, answer));
                }
                Err(failure) => failure,
            };
            // A try that failed for the client's reasons says nothing about the instance:
            // it is dropped unrecorded (a probe's slot given back), and not retried.
            if let Some(client) = client_fault(failure) {
                span.failed("client");
                return Err(refused(client, spans));
            }
            span.failed(failure.label());
            self.failed(&mut attempt, failure).map_err(|e| refused(e, spans))?;
        }
    }

    /// The next try's instance, or 503 when every instance's breaker refuses.
    fn next(&mut self, started: Instant) -> Result<Try, ApiError> {
        // The first try starts as the request did (a few microseconds of routing later).
        let now = if self.attempt == 0 { started } else { Instant::now() };
        let deadline = match self.retry.per_try_timeout_ms {
            Some(ms) => self.deadline.min(now + Duration::from_millis(ms.get())),
            None => self.deadline,
        };
        let tried = &self.tried[..self.attempt as usize];
        let picked = pick(self.plane, self.service_name, &self.state, &self.candidates, self.policy, tried, deadline);
        let (upstream, scheme, probe) = picked.map_err(|retry_after| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "circuit_open",
                format!("every instance of {} is refusing requests (circuit open)", self.service_name),
            )
            .with_retry_after(retry_after)
        })?;
        self.tried[self.attempt as usize] = upstream.instance;
        let may_retry = self.attempt < self.max_retries;
        Ok(Try { upstream, scheme, now, deadline, may_retry, traceparent: [0; 55], probe })
    }

    /// Accounts an answer with `status`; true when it is to be dropped and retried. A 5xx
    /// counts against the instance at once; any other answer's outcome is known once its
    /// body has been relayed: the caller reports it with [`Tries::settled`] or
    /// [`Tries::broke_off`] (or hands it to a [`Verdict`]).
    fn answered(&mut self, done: &mut Try, status: StatusCode) -> bool {
        if !status.is_server_error() {
            return false;
        }
        done.record(Outcome::ServerError, self.policy);
        self.count_failure("5xx");
        let gateway_error = matches!(status.as_u16(), 502..=504);
        let retry = gateway_error && self.retry.retry_on.contains(&gw::RetryCondition::X5xx) && self.may_retry();
        if retry {
            self.count_retry("5xx");
        }
        retry
    }

    /// Accounts a try that got no answer: `Ok` when another try follows, else the error
    /// to answer with.
    fn failed(&mut self, done: &mut Try, failure: TryFailure) -> Result<(), ApiError> {
        done.record(Outcome::Failure, self.policy);
        let outcome = failure.label();
        self.count_failure(outcome);
        if self.retry.retry_on.contains(&failure.condition()) && self.may_retry() {
            self.count_retry(outcome);
            return Ok(());
        }
        let (service, address) = (self.service_name, &done.upstream.address);
        Err(match failure {
            TryFailure::Timeout => error(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                format!("{service} did not answer in time (instance {address})"),
            ),
            TryFailure::Connect => error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("{service} refused the connection (instance {address})"),
            ),
            TryFailure::Tls => error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!(
                    "{service} could not be reached over TLS: its certificate was not accepted or no TLS version was agreed (instance {address})"
                ),
            ),
            TryFailure::Reset => error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("{service} closed the connection without answering (instance {address})"),
            ),
        })
    }

    /// Accounts an answer relayed whole (or whose client went away): a success.
    pub fn settled(&self, done: &mut Try) {
        done.record(Outcome::Success, self.policy);
    }

    /// Accounts an answer relayed in part: the instance broke its body off.
    pub fn broke_off(&self, done: &mut Try) {
        record_broken_body(&self.plane.metrics.failed_tries, done, self.policy);
    }

    /// Takes a retry when the request allows another try, the deadline has not passed and
    /// the service's budget has one.
    fn may_retry(&mut self) -> bool {
        let allowed = self.attempt < self.max_retries
            && Instant::now() < self.deadline
            && self.state.take_retry(self.retry.budget_percent.clamp(0, 100) as u64);
        if allowed {
            self.attempt += 1;
        }
        allowed
    }

    fn count_failure(&self, outcome: &'static str) {
        let labels = UpstreamLabels { service: self.service_name.to_string(), outcome: outcome.into() };
        self.plane.metrics.failed_tries.get_or_create(&labels).inc();
    }

    fn count_retry(&self, outcome: &'static str) {
        let labels = UpstreamLabels { service: self.service_name.to_string(), outcome: outcome.into() };
        self.plane.metrics.retries.get_or_create(&labels).inc();
    }
}

/// The outcome of an answer still being relayed, given when its body ends: a success
/// when it ends whole or the client goes away first (dropped), a failure of the instance
/// when the instance breaks it off ([`record_broken_body`]). A 5xx was counted already.
pub(crate) struct Verdict {
    attempt: Try,
    service: Arc<pake_registry::model::ServiceData>,
    failed_tries: Family<UpstreamLabels, Counter>,
    given: bool,
}

impl Verdict {
    pub(crate) fn new(
        plane: &DataPlane,
        attempt: Try,
        service: Option<&Arc<pake_registry::model::ServiceData>>,
        status: StatusCode,
    ) -> Option<Verdict> {
        if status.is_server_error() {
            return None;
        }
        Some(Verdict {
            attempt,
            service: service?.clone(),
            failed_tries: plane.metrics.failed_tries.clone(),
            given: false,
        })
    }

    /// The instance broke the body off: a failure (once).
    pub(crate) fn broke_off(&mut self) {
        if !std::mem::replace(&mut self.given, true) {
            record_broken_body(&self.failed_tries, &mut self.attempt, &self.service.policy);
        }
    }

    /// The body ended whole, or the client went away first: a success (once).
    pub(crate) fn settle(&mut self) {
        if !std::mem::replace(&mut self.given, true) {
            self.attempt.record(Outcome::Success, &self.service.policy);
        }
    }
}

impl Drop for Verdict {
    fn drop(&mut self) {
        self.settle();
    }
}

/// Records an answer whose body the instance broke off (closed or reset before its end,
/// malformed framing, silence): a failure of the instance for its breaker and outlier
/// detection, and a failed try (`outcome="body"`).
pub(crate) fn record_broken_body(
    failed_tries: &Family<UpstreamLabels, Counter>,
    done: &mut Try,
    policy: &mesh::TrafficPolicy,
) {
    done.record(Outcome::Failure, policy);
    let upstream = &done.upstream;
    let labels = UpstreamLabels { service: upstream.service.clone(), outcome: "body".into() };
    failed_tries.get_or_create(&labels).inc();
    tracing::debug!(service = %upstream.service, address = %upstream.address, "upstream broke off a response body");
}
