//! The data plane: every request that is not for the gateway's own API is matched to a
//! route, sent to a healthy instance of the route's service, and streamed back.
//!
//! The phases, in order, and why:
//! 1. **route** — version and longest path prefix; no route is 404, a route without the
//!    method is 405 (both with the contract's error body).
//! 2. **discover** — healthy, unexpired instances from the registry snapshot (no I/O).
//! 3. **balance** — the service's traffic policy picks among instances whose breaker
//!    admits a request (round robin, least request by two random choices, weighted).
//! 4. **forward** — hop-by-hop headers dropped, `X-Forwarded-*`, `X-Request-Id` and W3C
//!    `traceparent` set, bodies streamed both ways over pooled keep-alive connections,
//!    each try bounded by the per-try timeout and the route's deadline.
//! 5. **retry** — only idempotent requests without a body, only on the conditions the
//!    route names, only while the service's retry budget allows, on another instance.
//! 6. **account** — the breaker and outlier detection see every try; metrics every request.
//!
//! Nothing here awaits the database or takes a lock shared by all requests.

use crate::bodies::{ClientBody, UpstreamBody};
use crate::connections::{self, SendFailure};
use crate::edge::{Edge, PolicyTable, Refused};
use crate::forwarded::Caller;
use crate::headers::{TRACEPARENT, TRACESTATE, X_FORWARDED_FOR, forward_headers, remove_hop_by_hop};
use crate::routes::{Match, RouteTable};
use crate::spans::{Arrival, RequestSpans};
use crate::tries::{Transport, Tries, Try, Verdict, idempotent};
use crate::upstream::Upstreams;
use arc_swap::ArcSwap;
use axum::body::Body;
use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use pake_api_runtime::ApiError;
use pake_mesh_server::types as mesh;
use pake_registry::snapshot::SnapshotCell;
use pake_trace::w3c::TraceParent;
use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::plane_metrics::{ProxyMetrics, RouteMetrics};
use std::time::Instant;

/// Everything the data plane reads.
pub struct DataPlane {
    pub routes: ArcSwap<RouteTable>,
    /// The client for `https` instances.
    pub https: connections::HttpsClient,
    pub policies: ArcSwap<PolicyTable>,
    pub registry: Arc<SnapshotCell>,
    pub upstreams: Upstreams,
    pub metrics: ProxyMetrics,
    pub edge: Edge,
    /// Whose `X-Forwarded-For` says who the client is.
    pub trusted_proxies: crate::forwarded::TrustedProxies,
    /// What records the requests' spans; none: no spans.
    pub tracer: Option<pake_trace::Recorder>,
}

impl DataPlane {
    pub fn new(
        registry: Arc<SnapshotCell>,
        metrics: ProxyMetrics,
        edge: Edge,
        https: connections::HttpsClient,
        trusted_proxies: crate::forwarded::TrustedProxies,
        tracer: Option<pake_trace::Recorder>,
    ) -> DataPlane {
        DataPlane {
            trusted_proxies,
            tracer,
            https,
            routes: ArcSwap::from_pointee(RouteTable::default()),
            policies: ArcSwap::from_pointee(PolicyTable::default()),
            registry,
            upstreams: Upstreams::default(),
            metrics,
            edge,
        }
    }
}

pub(crate) fn error(status: StatusCode, code: &'static str, message: String) -> ApiError {
    ApiError::new(status, code, message)
}

/// Sends one try to an instance by its scheme.
async fn send(
    https: &connections::HttpsClient,
    scheme: mesh::InstanceScheme,
    address: &Arc<str>,
    request: axum::http::Request<Body>,
    now: Instant,
) -> Result<axum::http::Response<Body>, SendFailure> {
    if scheme == mesh::InstanceScheme::Http {
        return Ok(connections::send(address, request, now).await?.map(Body::new));
    }
    let response = if scheme == mesh::InstanceScheme::Https {
        https.request(request).await
    } else {
        connections::h2c_client().request(request).await
    };
    let response = response.map_err(|failed| match tls_failure(&failed) {
        Some(tls) => SendFailure::Tls(format!("{address}: {tls}")),
        None if failed.is_connect() => SendFailure::Connect(format!("{failed:?}")),
        None => SendFailure::Failed(format!("{failed:?}")),
    })?;
    Ok(response.map(Body::new))
}

/// The TLS error somewhere in `error`'s chain of causes, if a handshake failed.
fn tls_failure<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // tokio-rustls reports the handshake's error inside an I/O error (itself wrapped in
        // another by the connector), and an I/O error's `source` skips what it wraps.
        if let Some(inner) = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            cause = Some(inner);
            continue;
        }
        cause = error.source();
    }
    None
}

/// The data plane: answers a request that is not for the gateway's own API.
pub async fn handle(plane: &DataPlane, request: Request, peer: Option<SocketAddr>) -> Response {
    let started = Instant::now();
    let caller = peer.map(|peer| {
        let listed = request.headers().get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes);
        plane.trusted_proxies.caller(peer, listed)
    });
    let parent = TraceParent::from_lines(request.headers().get_all(&TRACEPARENT).iter().map(HeaderValue::as_bytes));
    let mut spans = RequestSpans::start(plane.tracer.as_ref(), parent, || Arrival {
        method: request.method(),
        path: request.uri().path(),
        host: request
            .headers()
            .get(header::HOST)
            .map(HeaderValue::as_bytes)
            .or_else(|| request.uri().authority().map(|authority| authority.as_str().as_bytes())),
        client: caller.map(|caller| caller.client),
        tracestate: request.headers().get(&TRACESTATE).map(HeaderValue::as_bytes),
        route: None,
    });
    let response = match spans
        .check("request", check_host(request.version(), request.headers().get_all(header::HOST).iter().count()))
    {
        Ok(()) => route_and_forward(plane, request, caller, parent.is_some(), &mut spans, started).await,
        Err(refused) => refused.into_response(),
    };
    spans.end(response.status());
    response
}

/// Routes a request and applies its route: [`handle`] once the request's spans started.
async fn route_and_forward(
    plane: &DataPlane,
    mut request: Request,
    caller: Option<Caller>,
    continued: bool,
    spans: &mut RequestSpans<'_>,
    started: Instant,
) -> Response {
    let table = plane.routes.load();
    let (route, upstream_path, normalised) =
        match spans.located(locate(&table, request.method(), crate::path::normalize(request.uri().path()))) {
            Ok(located) => {
                let normalised = (located.forwarded != request.uri().path())
                    .then(|| with_path(request.uri(), &located.forwarded).ok())
                    .flatten();
                (located.route, located.upstream_path().to_string(), normalised)
            }
            Err(refused) => return refused.into_response(),
        };
    // What follows (the cache key, the tries) sees the path as forwarded.
    if let Some(uri) = normalised {
        *request.uri_mut() = uri;
    }
    let method = request.method().clone();
    let forwarding = Forwarding { plane, route, upstream_path: &upstream_path, caller, continued, started };
    let response = apply_policies(forwarding, request, spans).await;
    route.metrics.record(&method, response.status(), started, spans.answering_instance());
    response
}

/// `uri` with its path replaced by `path` (its query kept).
pub(crate) fn with_path(uri: &Uri, path: &str) -> Result<Uri, axum::http::Error> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// RFC 9112 §3.2: an HTTP/1.1 request without exactly one `Host` answers 400, whichever
/// transport read it (HTTP/2 carries `:authority` instead).
pub(crate) fn check_host(version: axum::http::Version, hosts: usize) -> Result<(), ApiError> {
    if version != axum::http::Version::HTTP_11 || hosts == 1 {
        return Ok(());
    }
    let problem = if hosts == 0 { "has no Host header" } else { "has more than one Host header" };
    Err(error(StatusCode::BAD_REQUEST, "invalid_host", format!("the HTTP/1.1 request {problem}")))
}

/// A request's route and the path its upstream is sent, found the one way every transport
/// finds them ([`crate::path`]): the path normalised, the route matched on it with runs of
/// `/` merged, and the normalised path forwarded (merged unless the route keeps empty
/// segments), less the version segment and, when the route strips it, its prefix.
pub(crate) struct Located<'t, 'p> {
    pub route: &'t crate::routes::CompiledRoute,
    /// The whole normalised path as forwarded (version segment included).
    pub forwarded: std::borrow::Cow<'p, str>,
    /// Where the upstream's path starts in `forwarded` (its length: `/`).
    upstream_at: usize,
}

impl Located<'_, '_> {
    /// The path the upstream is sent.
    pub fn upstream_path(&self) -> &str {
        if self.upstream_at >= self.forwarded.len() { "/" } else { &self.forwarded[self.upstream_at..] }
    }
}

/// Finds the route for `method` and a request path as [`crate::path::normalize`] read it:
/// 400 for a path that cannot be forwarded unambiguously, 404/405 when no route takes it.
pub(crate) fn locate<'t, 'p>(
    table: &'t RouteTable,
    method: &Method,
    normal: Result<std::borrow::Cow<'p, str>, crate::path::PathError>,
) -> Result<Located<'t, 'p>, Box<Refused>> {
    let normal = normal.map_err(|invalid| Box::new(Refused::from(ApiError::from(invalid))))?;
    let matched = crate::path::merged(&normal);
    let route = match table.find(method, &matched) {
        Match::Route { route, .. } => route,
        refused => return Err(Box::new(refusal(refused, method, &matched))),
    };
    let forwarded = if route.route.merge_slashes { matched } else { normal };
    let skip = 1 + if route.route.strip_prefix { route.segments } else { 0 };
    let upstream_at = crate::path::after_segments(&forwarded, skip);
    Ok(Located { route, forwarded, upstream_at })
}

/// What forwarding a routed request needs besides the request and its spans.
#[derive(Clone, Copy)]
struct Forwarding<'a> {
    plane: &'a DataPlane,
    route: &'a crate::routes::CompiledRoute,
    upstream_path: &'a str,
    caller: Option<Caller>,
    /// Whether the request continues a trace (its `tracestate` goes on).
    continued: bool,
    started: Instant,
}

/// Auth, rate limits and the cache, as the route asks, around forwarding.
async fn apply_policies(forwarding: Forwarding<'_>, request: Request, spans: &mut RequestSpans<'_>) -> Response {
    let Forwarding { plane, route, caller, .. } = forwarding;
    let settings = &route.route;
    let principal = if settings.require_token {
        match spans.check("auth", plane.edge.authenticate(request.headers(), settings)) {
            Ok(principal) => Some(principal),
            Err(refused) => return refused.into_response(),
        }
    } else {
        None
    };
    // Only a route's own policy or a caller's client policy can limit; most routes have
    // neither, and skip the table.
    let table = (settings.rate_limit_policy_id.is_some() || principal.is_some()).then(|| plane.policies.load());
    let limited = match &table {
        Some(table) => {
            let limited = Box::pin(plane.edge.rate_limit(
                table,
                settings,
                principal.as_deref().map(|verified| &verified.principal),
                caller.map(|caller| caller.client),
                &spans.children(),
            ))
            .await;
            match spans.rate_limited(limited) {
                Ok(limited) => limited,
                Err(refused) => return refused.into_response(),
            }
        }
        None => None,
    };
    let mut response = if settings.cache.enabled {
        let tenant = principal.as_ref().and_then(|verified| verified.principal.tenant.as_deref()).unwrap_or("-");
        let children = spans.children();
        let sending = &mut *spans;
        let send = move |request: Request| async move {
            forward(forwarding, request, sending).await.unwrap_or_else(IntoResponse::into_response)
        };
        let response = Box::pin(crate::caching::through_cache(plane, route, request, tenant, children, send)).await;
        if let Some(verdict) = response.headers().get("x-cache-status").and_then(|value| value.to_str().ok()) {
            spans.cache(verdict);
        }
        response
    } else {
        forward(forwarding, request, spans).await.unwrap_or_else(IntoResponse::into_response)
    };
    if let Some((decision, limit)) = limited {
        crate::edge::add_headers(response.headers_mut(), &decision, limit);
    }
    response
}

/// The answer to a request no route takes: 405 with `Allow` when routes match the path
/// but not the method, 404 otherwise.
pub(crate) fn refusal(found: Match<'_, '_>, method: &Method, path: &str) -> Refused {
    match found {
        Match::MethodNotAllowed { allow } => {
            let mut refused = Refused::from(error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not routed for {path}; this path allows {allow}"),
            ));
            if let Ok(value) = HeaderValue::from_str(&allow) {
                refused.headers.insert(header::ALLOW, value);
            }
            refused
        }
        Match::NoRoute | Match::Route { .. } => {
            Refused::from(error(StatusCode::NOT_FOUND, "no_route", format!("no route for {path}")))
        }
    }
}

async fn forward(
    forwarding: Forwarding<'_>,
    request: Request,
    spans: &mut RequestSpans<'_>,
) -> Result<Response, ApiError> {
    let Forwarding { plane, route, upstream_path, caller, continued, started } = forwarding;
    let route = &route.route;
    let (mut parts, body) = request.into_parts();
    let idempotent = idempotent(&parts.method);
    let bodyless = HttpBody::size_hint(&body).exact() == Some(0);
    let snapshot = plane.registry.load();
    let service = snapshot.service_by_name(route.service.as_str());
    let mut tries = spans.check(
        "upstream",
        Tries::new(plane, route, service.map(|service| &**service), started, idempotent && bodyless),
    )?;

    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{upstream_path}?{query}"),
        None => upstream_path.to_string(),
    };
    // The origin form (`/path?query`), as plain HTTP/1.1 tries send it.
    let origin = Uri::try_from(path_and_query)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "invalid_path", "the request path cannot be forwarded".into()))?;
    // A body of unknown length goes on chunked, whatever the method: hyper would send a
    // GET's without framing, that is, drop it.
    let chunked = !bodyless && HttpBody::size_hint(&body).exact().is_none();
    forward_headers(&mut parts.headers, caller, continued);
    // A body is watched, so that a try that failed because the client's body did is not
    // held against the instance.
    let (body, watch) = if bodyless {
        (body, None)
    } else {
        let (body, watch) = ClientBody::watch(body);
        (body, Some(watch))
    };
    let mut transport =
        HyperTry { plane, method: parts.method, origin, headers: Some(parts.headers), body: Some(body), chunked };
    let client_fault = |failure| watch.as_ref().and_then(|watch| watch.client_fault(failure));
    let (attempt, mut response) = tries.run(started, &mut transport, spans, client_fault).await?;
    remove_hop_by_hop(response.headers_mut());
    // A 5xx was counted when it arrived; any other answer is judged by its end.
    Ok(match Verdict::new(plane, attempt, service, response.status()) {
        Some(verdict) => response.map(|body| Body::new(UpstreamBody { body, verdict })),
        None => response,
    })
}

/// A request sent the general path's way: plain HTTP/1.1 over this thread's pooled
/// connections, h2c and https through hyper-util's client.
struct HyperTry<'a> {
    plane: &'a DataPlane,
    method: Method,
    /// The origin form (`/path?query`).
    origin: Uri,
    /// Moved into the last try; copied only while a retry is possible.
    headers: Option<HeaderMap>,
    body: Option<Body>,
    /// Whether the body goes chunked (its length is unknown).
    chunked: bool,
}

impl Transport for HyperTry<'_> {
    type Answer = axum::http::Response<Body>;

    fn send(&mut self, attempt: &Try) -> impl Future<Output = Result<Self::Answer, SendFailure>> + Send {
        let upstream = &attempt.upstream;
        // Plain HTTP/1.1 sends the origin form; hyper-util's client wants the absolute form.
        let origin = &self.origin;
        let uri = match attempt.scheme {
            mesh::InstanceScheme::Http => Ok(origin.clone()),
            mesh::InstanceScheme::Https => Uri::try_from(format!("https://{}{origin}", upstream.address)),
            mesh::InstanceScheme::H2c => Uri::try_from(format!("http://{}{origin}", upstream.address)),
        };
        let mut outgoing = axum::http::Request::new(self.body.take().unwrap_or_default());
        *outgoing.method_mut() = self.method.clone();
        *outgoing.headers_mut() = if attempt.may_retry {
            self.headers.clone().unwrap_or_default()
        } else {
            self.headers.take().unwrap_or_default()
        };
        outgoing.headers_mut().insert(header::HOST, upstream.host.clone());
        outgoing
            .headers_mut()
            .insert(TRACEPARENT.clone(), HeaderValue::from_bytes(&attempt.traceparent).expect("hex is a header value"));
        if self.chunked && attempt.scheme == mesh::InstanceScheme::Http {
            outgoing.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        let https = &self.plane.https;
        async move {
            let address = &attempt.upstream.address;
            // The origin form is valid, so only an address that is no authority fails here.
            *outgoing.uri_mut() =
                uri.map_err(|_| SendFailure::Connect(format!("{address} is not a usable address")))?;
            send(https, attempt.scheme, address, outgoing, attempt.now).await
        }
    }
}
