//! Server spans for the contract routers of the services: one span per request, named by
//! the operation's `operationId`, continuing the caller's W3C trace context, with the HTTP
//! semantic-convention attributes and the outcome.
//!
//! The span's context is current while the handler runs, so that what the handler does
//! records under it: child spans ([`in_child_span`]), log lines (which carry `trace_id`
//! and `span_id`) and error bodies (which carry `trace_id`).
//!
//! A request whose future is dropped before it answers (the client went away, a timeout)
//! still ends its span, marked as cancelled.

use crate::Tracer;
use crate::w3c;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use pake_api_runtime::OperationSpec;
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// What the server-span middleware of one service knows: its tracer and the names of its
/// operations by method and route.
#[derive(Clone)]
pub struct ServerSpans {
    inner: Arc<Inner>,
}

struct Inner {
    tracer: Tracer,
    /// Route → (method, operation id) of each operation on it.
    operations: HashMap<&'static str, Vec<(Method, &'static str)>>,
}

impl std::fmt::Debug for ServerSpans {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("ServerSpans").field("operations", &self.inner.operations.len()).finish()
    }
}

/// The service's tracer, carried in the context of its requests so that code deep in a
/// handler (a store call) can open child spans without being handed a tracer.
#[derive(Clone)]
struct CurrentTracer(Tracer);

impl ServerSpans {
    /// Spans for the operations of one generated server (its `OPERATIONS`).
    pub fn new(tracer: Tracer, operations: &[&'static OperationSpec]) -> ServerSpans {
        let mut by_route: HashMap<&'static str, Vec<(Method, &'static str)>> = HashMap::new();
        for spec in operations {
            if let Ok(method) = Method::from_bytes(spec.method.as_bytes()) {
                by_route.entry(spec.path).or_default().push((method, spec.operation_id));
            }
        }
        let operations = by_route;
        ServerSpans { inner: Arc::new(Inner { tracer, operations }) }
    }

    /// `router` with a server span per request, recorded as `service`'s, when `telemetry`
    /// records spans at all; `router` unchanged otherwise.
    pub fn around(
        router: axum::Router,
        telemetry: &crate::Telemetry,
        service: &str,
        operations: &[&'static OperationSpec],
    ) -> axum::Router {
        if !telemetry.enabled() {
            return router;
        }
        let spans = ServerSpans::new(telemetry.tracer(service), operations);
        router.layer(axum::middleware::from_fn_with_state(spans, ServerSpans::trace))
    }

    /// The span's name: the operation id of the matched route, else `METHOD route` (an
    /// unmatched request: `METHOD` alone, as the semantic conventions say when there is no
    /// route, so that scanners cannot grow the set of names).
    fn name(&self, method: &Method, route: Option<&str>) -> Cow<'static, str> {
        let Some(route) = route else {
            return Cow::Owned(method.as_str().to_string());
        };
        let lookup = if method == Method::HEAD { Method::GET } else { method.clone() };
        let operations = self.inner.operations.get(route).map(Vec::as_slice).unwrap_or_default();
        match operations.iter().find(|(m, _)| *m == lookup) {
            Some((_, operation)) => Cow::Borrowed(*operation),
            None => Cow::Owned(format!("{method} {route}")),
        }
    }

    /// The axum middleware: `router.layer(axum::middleware::from_fn_with_state(spans, ServerSpans::trace))`
    /// (a `layer`, so that it sees the matched route, or [`ServerSpans::around`]).
    pub async fn trace(State(spans): State<ServerSpans>, request: Request, next: Next) -> Response {
        let method = request.method().clone();
        let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_string());
        let name = spans.name(&method, route.as_deref());
        let parent = match w3c::extract(request.headers()) {
            Some(remote) => Context::new().with_remote_span_context(remote),
            None => Context::new(),
        };
        let mut attributes = Vec::with_capacity(6);
        attributes.push(KeyValue::new("http.request.method", method.as_str().to_string()));
        attributes.push(KeyValue::new("url.path", request.uri().path().to_string()));
        if let Some(route) = route {
            attributes.push(KeyValue::new("http.route", route));
        }
        attributes.push(KeyValue::new("network.protocol.version", protocol_version(request.version())));
        if let Some(agent) = request.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::new("user_agent.original", agent.to_string()));
        }
        let tracer = &spans.inner.tracer;
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        let context = parent.with_span(span).with_value(CurrentTracer(tracer.clone()));
        let mut open = OpenSpan { context: context.clone(), answered: false };
        let response = next.run(request).with_context(context).await;
        open.answered(response.status().as_u16());
        response
    }
}

/// A server span until its request answers; ended as cancelled when the request's future
/// is dropped first.
struct OpenSpan {
    context: Context,
    answered: bool,
}

impl OpenSpan {
    fn answered(&mut self, status: u16) {
        self.answered = true;
        let span = self.context.span();
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
        // A server span is an error for 5xx only: a 4xx is the client's (semantic conventions).
        if status >= 500 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(format!("answered {status}")));
        }
        span.end();
    }
}

impl Drop for OpenSpan {
    fn drop(&mut self) {
        if !self.answered {
            let span = self.context.span();
            span.set_attribute(KeyValue::new("error.type", "cancelled"));
            span.set_status(Status::error("the request was abandoned before it answered"));
            span.end();
        }
    }
}

fn protocol_version(version: axum::http::Version) -> &'static str {
    match version {
        axum::http::Version::HTTP_09 => "0.9",
        axum::http::Version::HTTP_10 => "1.0",
        axum::http::Version::HTTP_2 => "2",
        axum::http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Runs `work` in a child span of the current request's span (kind internal, or `kind`),
/// named `name`; an `Err` marks the span as an error. Outside a traced request it just
/// runs `work`.
pub async fn in_child_span<T, E: std::fmt::Display>(
    name: &'static str,
    attributes: impl FnOnce() -> Vec<KeyValue>,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let current = Context::current();
    let Some(CurrentTracer(tracer)) = current.get::<CurrentTracer>().cloned() else {
        return work.await;
    };
    if !current.span().span_context().is_valid() {
        return work.await;
    }
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Client)
        .with_attributes(attributes())
        .start_with_context(&tracer, &current);
    let context = current.with_span(span);
    let result = work.with_context(context.clone()).await;
    let span = context.span();
    if let Err(error) = &result {
        span.set_status(Status::error(error.to_string()));
    }
    span.end();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(method: &'static str, path: &'static str, operation_id: &'static str) -> &'static OperationSpec {
        Box::leak(Box::new(OperationSpec::new(operation_id, method, path, None, &[], "{}", None)))
    }

    #[test]
    fn spans_are_named_by_operation_id_and_unmatched_requests_by_method() {
        use opentelemetry::trace::TracerProvider as _;
        let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder().build().tracer("test");
        let operations = [spec("GET", "/api/v1/services/{id}", "getService"), spec("POST", "/x", "makeX")];
        let spans = ServerSpans::new(tracer, &operations);
        assert_eq!(spans.name(&Method::GET, Some("/api/v1/services/{id}")), "getService");
        assert_eq!(spans.name(&Method::HEAD, Some("/api/v1/services/{id}")), "getService");
        assert_eq!(spans.name(&Method::POST, Some("/x")), "makeX");
        assert_eq!(spans.name(&Method::DELETE, Some("/x")), "DELETE /x");
        assert_eq!(spans.name(&Method::GET, None), "GET");
    }
}
