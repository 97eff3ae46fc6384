//! Turning results into responses: typed bodies, the 404/405 answers, and the contract
//! and its documentation page.

use crate::ApiError;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Renders the result of a trait method.
pub fn respond<R: IntoResponse>(result: Result<R, ApiError>) -> Response {
    match result {
        Ok(response) => response.into_response(),
        Err(error) => error.into_response(),
    }
}

fn finish(
    status: u16,
    content_type: Option<&str>,
    body: axum::body::Body,
    headers: Vec<(&'static str, String)>,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    if let Some(value) = content_type.and_then(|c| HeaderValue::from_str(c).ok()) {
        map.insert(header::CONTENT_TYPE, value);
    }
    for (name, value) in headers {
        match HeaderValue::from_str(&value) {
            Ok(value) => {
                map.append(HeaderName::from_static(name), value);
            }
            Err(_) => tracing::error!(header = name, "response header value is not valid; dropped"),
        }
    }
    response
}

/// A JSON response with the media type the contract declares.
pub fn json_response<T: Serialize>(
    status: u16,
    content_type: &str,
    body: &T,
    headers: Vec<(&'static str, String)>,
) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => finish(status, Some(content_type), bytes.into(), headers),
        Err(error) => ApiError::internal(&error).into_response(),
    }
}

/// A text response (`text/plain` gets `charset=utf-8`).
pub fn text_response(status: u16, content_type: &str, body: String, headers: Vec<(&'static str, String)>) -> Response {
    let content_type = if content_type.starts_with("text/") && !content_type.contains("charset") {
        format!("{content_type}; charset=utf-8")
    } else {
        content_type.to_string()
    };
    finish(status, Some(&content_type), body.into(), headers)
}

/// A response without a body.
pub fn empty_response(status: u16, headers: Vec<(&'static str, String)>) -> Response {
    finish(status, None, axum::body::Body::empty(), headers)
}

/// The fallback for paths no operation matches.
pub async fn not_found(uri: Uri) -> Response {
    ApiError::not_found(format!("no operation at {}", uri.path())).into_response()
}

/// The fallback for a known path asked with a method it does not declare.
pub fn method_not_allowed(
    allow: &'static str,
) -> impl FnOnce() -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    move || std::future::ready(ApiError::method_not_allowed(allow).into_response())
}

/// `GET /openapi.json`.
pub fn openapi_json(json: &'static str) -> Response {
    finish(200, Some("application/json"), json.into(), Vec::new())
}

/// `GET /docs`.
pub fn docs_page(html: &'static str) -> Response {
    finish(200, Some("text/html; charset=utf-8"), html.into(), Vec::new())
}
