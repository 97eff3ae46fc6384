//! The spans of a proxied request, the gateway being a proxy in the W3C sense: one server
//! span for the request (named by method and route, with the HTTP semantic-convention
//! attributes, and the reason when the gateway refused it or answered from its cache) and
//! one client span per try, siblings under it (instance, attempt number, outcome). The
//! upstream receives the try's span as its parent.
//!
//! Both transports record through this module, and the tries through [`Tries::run`]
//! (`crate::tries`), so they record alike. Without a tracer (the gateway traces nothing) a
//! request carries no span: each step costs one branch, and the upstream receives the
//! incoming trace continued under a random parent id, or a new trace.

use crate::edge::Refused;
use crate::upstream::Upstream;
use axum::http::{Method, StatusCode};
use pake_trace::opentelemetry::trace::{SpanId, SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _};
use pake_trace::opentelemetry::{Context, KeyValue};
use pake_trace::w3c::TraceParent;
use pake_trace::{Recorder, Recording, Tracer};
use std::net::SocketAddr;

/// Attribute keys beyond the semantic conventions'.
mod key {
    /// Why the gateway answered itself: `auth`, `rate_limit`, `route`, `upstream`.
    pub const REFUSAL: &str = "pake.refusal";
    /// The error code of the gateway's own answer (the contract's `Error.code`).
    pub const ERROR_CODE: &str = "error.type";
    /// The response cache's verdict (`hit`, `miss`, ...).
    pub const CACHE: &str = "pake.cache";
    pub const SERVICE: &str = "pake.service";
    pub const INSTANCE_ID: &str = "pake.instance.id";
    pub const INSTANCE_ADDRESS: &str = "pake.instance.address";
    pub const ATTEMPT: &str = "pake.attempt";
    pub const OUTCOME: &str = "pake.outcome";
}

/// The request's method as a static string where it is a standard one (no allocation).
fn method_name(method: &Method) -> std::borrow::Cow<'static, str> {
    match *method {
        Method::GET => "GET".into(),
        Method::POST => "POST".into(),
        Method::PUT => "PUT".into(),
        Method::DELETE => "DELETE".into(),
        Method::HEAD => "HEAD".into(),
        Method::OPTIONS => "OPTIONS".into(),
        Method::PATCH => "PATCH".into(),
        Method::TRACE => "TRACE".into(),
        Method::CONNECT => "CONNECT".into(),
        ref other => other.as_str().to_string().into(),
    }
}

/// What a request arrives with that its server span records (read only when traced).
pub(crate) struct Arrival<'r> {
    pub method: &'r Method,
    /// The request's path as the client sent it (no query).
    pub path: &'r str,
    /// `Host` (or the HTTP/2 authority).
    pub host: Option<&'r [u8]>,
    /// The client, as trusted proxies report it.
    pub client: Option<SocketAddr>,
    /// Its `tracestate`, which goes with a valid parent only.
    pub tracestate: Option<&'r [u8]>,
    /// The route that took it, when known as the request arrives (the span is then
    /// named by it from the start; otherwise [`RequestSpans::route`] renames it).
    pub route: Option<&'r crate::routes::CompiledRoute>,
}

/// A request's spans (none when the gateway traces nothing).
pub(crate) struct RequestSpans<'p> {
    traced: Option<Traced<'p>>,
    /// What the upstream receives when nothing is traced.
    untraced: TraceParent,
    /// The registry instance whose answer the request relays, once [`Tries::run`]
    /// (`crate::tries`) got one; none while the gateway answers itself. Kept whether or
    /// not anything is traced: the request's sample carries it.
    answered_by: Option<uuid::Uuid>,
}

struct Traced<'p> {
    recorder: &'p Recorder,
    /// The server span, recorded as a value: the parent of the tries' and the stores' spans.
    server: Recording<'p>,
    method: std::borrow::Cow<'static, str>,
    tries: i64,
}

impl<'p> RequestSpans<'p> {
    /// Starts the request's server span with `recorder` (none: no spans), as the child of
    /// `parent`, the one valid `traceparent` the request carried (none: a new trace).
    pub fn start<'r>(
        recorder: Option<&'p Recorder>,
        parent: Option<TraceParent>,
        arrival: impl FnOnce() -> Arrival<'r>,
    ) -> RequestSpans<'p> {
        let Some(recorder) = recorder else {
            let untraced = parent.map_or_else(TraceParent::new, TraceParent::with_new_parent);
            return RequestSpans { traced: None, untraced, answered_by: None };
        };
        let unused = TraceParent { trace_id: TraceId::INVALID, parent_id: SpanId::INVALID, sampled: false };
        RequestSpans { traced: Some(Traced::start(recorder, parent, arrival())), untraced: unused, answered_by: None }
    }

    /// The instance `instance` answered: its answer is the one relayed.
    pub fn answered_by(&mut self, instance: uuid::Uuid) {
        self.answered_by = Some(instance);
    }

    /// The instance whose answer is relayed; none when the gateway answered itself (no
    /// route, a refusal, a cache hit, every try failed).
    pub fn answering_instance(&self) -> Option<uuid::Uuid> {
        self.answered_by
    }

    /// The request matched `route`: the span is named by it.
    pub fn route(&mut self, route: &crate::routes::CompiledRoute) {
        let Some(traced) = &mut self.traced else { return };
        traced.server.update_name(span_name(&traced.method, route));
        traced.server.set_attributes(route_attributes(route));
    }

    /// The gateway refused the request at `stage` with `code` (the error body's).
    pub fn refused(&mut self, stage: &'static str, code: &str) {
        let Some(traced) = &mut self.traced else { return };
        traced
            .server
            .set_attributes([KeyValue::new(key::REFUSAL, stage), KeyValue::new(key::ERROR_CODE, code.to_string())]);
    }

    /// Passes on a step's result, recording a refusal at `stage` (`request`, `auth`,
    /// `upstream`); the refusal's error body names the trace.
    pub fn check<T>(
        &mut self,
        stage: &'static str,
        checked: Result<T, pake_api_runtime::ApiError>,
    ) -> Result<T, pake_api_runtime::ApiError> {
        checked.map_err(|refused| self.refusal(stage, refused))
    }

    /// Records `refused` as the request's refusal at `stage`; it comes back naming the trace.
    pub fn refusal(&mut self, stage: &'static str, refused: pake_api_runtime::ApiError) -> pake_api_runtime::ApiError {
        self.refused(stage, refused.code());
        self.stamped(refused)
    }

    /// `refused`, naming the request's trace when it is traced.
    fn stamped(&self, refused: pake_api_runtime::ApiError) -> pake_api_runtime::ApiError {
        match &self.traced {
            Some(traced) => refused.with_trace_id(traced.server.context().trace_id().to_string()),
            None => refused,
        }
    }

    /// Passes on routing's result: the span is named by the route, or records why none
    /// took the request (the refusal names the trace).
    pub fn located<'t, 'x>(
        &mut self,
        located: Result<crate::proxy::Located<'t, 'x>, Box<Refused>>,
    ) -> Result<crate::proxy::Located<'t, 'x>, Box<Refused>> {
        match located {
            Ok(found) => {
                self.route(found.route);
                Ok(found)
            }
            Err(refused) => Err(self.unrouted(refused)),
        }
    }

    /// No route took the request: `refused` is recorded, and comes back naming the trace.
    pub fn unrouted(&mut self, mut refused: Box<Refused>) -> Box<Refused> {
        refused.error = self.refusal("route", refused.error);
        refused
    }

    /// Passes on a rate limit's verdict, recording a refusal (whose error body names the
    /// trace).
    pub fn rate_limited<T>(&mut self, limited: Result<T, Refused>) -> Result<T, Refused> {
        limited.map_err(|mut refused| {
            refused.error = self.refusal("rate_limit", refused.error);
            refused
        })
    }

    /// What starts the request's child spans for calls to its stores (through the
    /// service's tracer: they are few, and may end on another task).
    pub fn children(&self) -> ChildSpans<'p> {
        ChildSpans {
            traced: self.traced.as_ref().map(|traced| {
                let parent = Context::new().with_remote_span_context(traced.server.context().clone());
                (traced.recorder.tracer(), parent)
            }),
        }
    }

    /// The response cache's verdict on the request.
    pub fn cache(&mut self, verdict: &str) {
        let Some(traced) = &mut self.traced else { return };
        traced.server.set_attribute(KeyValue::new(key::CACHE, verdict.to_string()));
    }

    /// Starts a try's span; its `traceparent` is what the instance receives.
    pub fn try_started(&mut self, upstream: &Upstream) -> TrySpan<'p> {
        let Some(traced) = &mut self.traced else {
            return TrySpan { span: None, traceparent: self.untraced.format() };
        };
        traced.tries += 1;
        // Room for the outcome's two attributes as well.
        let mut attributes = Vec::with_capacity(5);
        attributes.extend([
            KeyValue::new(key::INSTANCE_ID, upstream.instance_text.clone()),
            KeyValue::new(key::INSTANCE_ADDRESS, upstream.address.clone()),
            KeyValue::new(key::ATTEMPT, traced.tries),
        ]);
        let span =
            traced.recorder.start(traced.method.clone(), SpanKind::Client, Some(traced.server.context()), attributes);
        let traceparent = TraceParent::of(span.context()).format();
        TrySpan { span: Some(span), traceparent }
    }

    /// Ends the server span with the answer's status (5xx: an error).
    pub fn end(self, status: StatusCode) {
        let Some(Traced { mut server, .. }) = self.traced else { return };
        server.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
        if status.is_server_error() {
            server.set_status(Status::error(status.as_str().to_string()));
        }
        server.end();
    }
}

impl<'p> Traced<'p> {
    fn start(recorder: &'p Recorder, parent: Option<TraceParent>, arrival: Arrival<'_>) -> Traced<'p> {
        let parent = parent.map(|parent| parent.remote_context(arrival.tracestate));
        let method = method_name(arrival.method);
        // Room for the route's attributes and the status as well.
        let mut attributes = Vec::with_capacity(8);
        attributes.push(KeyValue::new("http.request.method", method.clone()));
        attributes.push(KeyValue::new("url.path", arrival.path.to_string()));
        if let Some(host) = arrival.host.and_then(|host| std::str::from_utf8(host).ok()) {
            attributes.push(KeyValue::new("server.address", host.to_string()));
        }
        if let Some(client) = arrival.client {
            let mut text = [0u8; 48];
            let length = crate::headers::write_ip(&mut text, client.ip());
            let ip = std::str::from_utf8(&text[..length]).unwrap_or_default();
            attributes.push(KeyValue::new("client.address", ip.to_string()));
        }
        let name = match arrival.route {
            Some(route) => {
                attributes.extend(route_attributes(route));
                span_name(&method, route).into()
            }
            None => method.clone(),
        };
        let server = recorder.start(name, SpanKind::Server, parent.as_ref(), attributes);
        Traced { recorder, server, method, tries: 0 }
    }
}

/// A routed request's span name: its method and the route's template (`GET /v1/search`).
fn span_name(method: &str, route: &crate::routes::CompiledRoute) -> String {
    let mut name = String::with_capacity(method.len() + 1 + route.template.len());
    name.push_str(method);
    name.push(' ');
    name.push_str(&route.template);
    name
}

/// What a routed request's span says of its route (shared strings, no copies).
fn route_attributes(route: &crate::routes::CompiledRoute) -> [KeyValue; 2] {
    [KeyValue::new("http.route", route.template.clone()), KeyValue::new(key::SERVICE, route.service.clone())]
}

/// Starts child spans of a request's server span for calls to a store (Redis: the shared
/// rate limits, the cache's L2), apart from the [`RequestSpans`] they came from: the
/// cache's lookup runs while its forwarding holds those. A span ends when dropped, so a
/// call given up (the request cancelled) still ends its span.
#[derive(Clone)]
pub(crate) struct ChildSpans<'p> {
    traced: Option<(&'p Tracer, Context)>,
}

impl ChildSpans<'_> {
    /// A span named `name` for a call to `system` (a `db.system` value); none when the
    /// request is not traced.
    pub fn start(&self, name: &'static str, system: &'static str) -> Option<pake_trace::SdkSpan> {
        let (tracer, parent) = self.traced.as_ref()?;
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("db.system", system)])
            .start_with_context(*tracer, parent);
        Some(span)
    }
}

/// One try's span (none when nothing is traced) and the `traceparent` its instance receives.
pub(crate) struct TrySpan<'p> {
    span: Option<Recording<'p>>,
    pub traceparent: [u8; 55],
}

impl TrySpan<'_> {
    /// Ends the span: the try got an answer with `status`.
    pub fn answered(self, status: StatusCode) {
        let Some(mut span) = self.span else { return };
        let outcome = if status.is_server_error() { "5xx" } else { "ok" };
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
        span.set_attribute(KeyValue::new(key::OUTCOME, outcome));
        if status.is_server_error() {
            span.set_status(Status::error(status.as_str().to_string()));
        }
        span.end();
    }

    /// Ends the span: the try got no answer, for the reason `outcome` names.
    pub fn failed(self, outcome: &'static str) {
        let Some(mut span) = self.span else { return };
        span.set_attribute(KeyValue::new(key::OUTCOME, outcome));
        span.set_status(Status::error(outcome));
        span.end();
    }
}
