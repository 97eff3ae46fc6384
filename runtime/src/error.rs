//! The one error type at the HTTP boundary, rendered as the contracts' shared `Error`
//! body: a stable `code`, a human `message`, optional `details` and `trace_id`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::borrow::Cow;

/// Where a problem in a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetailLocation {
    Body,
    Path,
    Query,
    Header,
}

/// One problem found in a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorDetail {
    pub location: DetailLocation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// An error answered to the client. Client mistakes carry a precise message; server
/// failures ([`ApiError::internal`]) log their cause and answer an opaque one.
///
/// Boxed so that `Result<T, ApiError>` stays small on every handler's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(Box<Parts>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    details: Vec<ErrorDetail>,
    /// Seconds for `Retry-After` (429 and 503).
    retry_after: Option<u64>,
    /// Value for `Allow` (405).
    allow: Option<&'static str>,
    trace_id: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[ErrorDetail]>::is_empty")]
    details: &'a [ErrorDetail],
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ApiError(Box::new(Parts {
            status,
            code: code.into(),
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
            allow: None,
            trace_id: None,
        }))
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn code(&self) -> &str {
        &self.0.code
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }

    pub fn details(&self) -> &[ErrorDetail] {
        &self.0.details
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.0.retry_after
    }

    pub fn with_details(mut self, details: Vec<ErrorDetail>) -> Self {
        self.0.details = details;
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after = Some(seconds);
        self
    }

    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.0.trace_id = Some(trace_id.into());
        self
    }

    pub fn bad_request(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "insufficient_scope", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message)
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after: u64) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).with_retry_after(retry_after)
    }

    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).with_retry_after(retry_after)
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut error =
            Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("this path allows {allow}"));
        error.0.allow = Some(allow);
        error
    }

    /// A server-side failure: the full cause chain is logged, the client gets an opaque
    /// message.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = cause.to_string();
        let mut source = cause.source();
        while let Some(next) = source {
            chain.push_str(": ");
            chain.push_str(&next.to_string());
            source = next.source();
        }
        tracing::error!(error = %chain, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.0.status.as_u16(), self.0.code, self.0.message)
    }
}

impl std::error::Error for ApiError {}

/// Shortens `text` to at most `max` characters, marking the cut. Messages quote client
/// input, and the contract bounds their length.
fn clip(text: &mut String, max: usize) {
    if text.chars().count() > max {
        let keep: String = text.chars().take(max - 1).collect();
        *text = keep + "…";
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = *self.0;
        // The bounds of the contracts' `Error` and `ErrorDetail` schemas.
        clip(&mut error.message, 2048);
        error.details.truncate(100);
        for detail in &mut error.details {
            clip(&mut detail.message, 1024);
            if let Some(field) = &mut detail.field {
                clip(field, 512);
            }
        }
        // The trace of the request being answered, so that a user can quote it and an
        // operator find every span and log line of the failure.
        let current =
            error.trace_id.is_none().then(pake_observe::current_span).flatten().map(|(trace, _)| trace.to_string());
        let body = Body {
            code: &error.code,
            message: &error.message,
            details: &error.details,
            trace_id: error.trace_id.as_deref().or(current.as_deref()),
        };
        let bytes = serde_json::to_vec(&body)
            .unwrap_or_else(|_| b"{\"code\":\"internal\",\"message\":\"internal error\"}".to_vec());
        let mut response = (error.status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(seconds) = error.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(allow) = error.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if error.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_messages_are_clipped_to_the_contract_bounds() {
        let detail =
            ErrorDetail { location: DetailLocation::Body, field: Some("/".repeat(600)), message: "é".repeat(5000) };
        let error = ApiError::unprocessable("x".repeat(5000)).with_details(vec![detail; 150]);
        let response = error.into_response();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["message"].as_str().unwrap().chars().count(), 2048);
        let details = body["details"].as_array().unwrap();
        assert_eq!(details.len(), 100);
        assert_eq!(details[0]["message"].as_str().unwrap().chars().count(), 1024);
        assert_eq!(details[0]["field"].as_str().unwrap().chars().count(), 512);
    }

    #[tokio::test]
    async fn error_bodies_name_the_trace_of_the_request_they_answer() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
        let body = |error: ApiError| async {
            let bytes = axum::body::to_bytes(error.into_response().into_body(), usize::MAX).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        assert!(body(ApiError::not_found("no such service")).await.get("trace_id").is_none());
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span = SpanContext::new(
            trace_id,
            SpanId::from_bytes(7u64.to_be_bytes()),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let answered = {
            let _attached = opentelemetry::Context::new().with_remote_span_context(span).attach();
            ApiError::not_found("no such service").into_response()
        };
        let bytes = axum::body::to_bytes(answered.into_body(), usize::MAX).await.unwrap();
        let traced: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(traced["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(traced["code"], "not_found");
    }
}
