//! A route's response cache on the data plane: which requests may be answered from it,
//! which answers may be stored and for how long, and the lookup, coalescing and storing
//! around forwarding ([`through_cache`]). The cache itself is [`pake_cache`].

use crate::proxy::DataPlane;
use crate::routes::CompiledRoute;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use pake_cache::{CacheKey, CachedResponse, Flight, Lookup};
use pake_gateway_server::types;
use std::sync::Arc;
use std::time::Duration;

/// Largest answer buffered to be stored or shared with coalesced requests; larger ones
/// stream through (the cache itself refuses entries over its own limit).
const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// Statuses a cache may store (RFC 9111 heuristically cacheable ones the contract names).
const STORABLE: &[u16] = &[200, 203, 204, 301, 404, 410];

/// Whether the request may be answered from the cache at all.
fn cacheable_request(route: &types::Route, method: &Method, headers: &HeaderMap) -> bool {
    let method_ok = route.cache.methods.iter().any(|m| m.to_string() == method.as_str());
    let refuses = headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().map(|v| v.to_ascii_lowercase()).is_ok_and(|v| v.contains("no-cache") || v.contains("no-store"))
    }) || headers.get(header::PRAGMA).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"));
    method_ok && !refuses
}

/// How long an upstream answer may be kept: the route's TTL, shortened by the answer's own
/// `s-maxage`/`max-age`; `None` when it must not be stored.
fn storable_for(route: &types::Route, status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if !STORABLE.contains(&status.as_u16()) || headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    let mut ttl = route.cache.ttl_seconds.get();
    let mut shared_max_age = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { return None };
        for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            if directive == "no-store" || directive == "private" || directive == "no-cache" {
                return None;
            }
            if let Some(seconds) = directive.strip_prefix("s-maxage=").and_then(|s| s.parse::<u64>().ok()) {
                shared_max_age = Some(seconds);
            } else if let Some(seconds) = directive.strip_prefix("max-age=").and_then(|s| s.parse::<u64>().ok()) {
                shared_max_age.get_or_insert(seconds);
            }
        }
    }
    if let Some(seconds) = shared_max_age {
        ttl = ttl.min(seconds);
    }
    (ttl > 0).then(|| Duration::from_secs(ttl))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn with_status(mut response: Response, status: &'static str) -> Response {
    response.headers_mut().insert(HeaderName::from_static("x-cache-status"), HeaderValue::from_static(status));
    response
}

/// A response from a cached (or shared) entry.
fn from_entry(entry: &CachedResponse, status: &'static str) -> Response {
    let mut response = Response::new(Body::from(entry.body.clone()));
    *response.status_mut() = StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in &entry.headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_maybe_shared(value.clone()))
        {
            headers.append(name, value);
        }
    }
    if status == "HIT" {
        let age = (now_ms() - entry.stored_at_ms).max(0) / 1000;
        headers.insert(header::AGE, HeaderValue::from(age as u64));
    }
    with_status(response, status)
}

/// Reads a body into memory up to `limit` bytes. Past the limit, gives back a body that
/// replays what was read and streams the rest, so nothing is lost.
async fn buffer(body: Body, limit: usize) -> Result<Bytes, Body> {
    use futures::StreamExt;
    if HttpBody::size_hint(&body).lower() as usize > limit {
        return Err(body);
    }
    let mut stream = body.into_data_stream();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                size += chunk.len();
                chunks.push(chunk);
                if size > limit {
                    let read = futures::stream::iter(chunks.into_iter().map(Ok::<Bytes, axum::Error>));
                    return Err(Body::from_stream(read.chain(stream)));
                }
            }
            Err(error) => {
                // The upstream broke off mid-body: pass on what came and the break itself.
                let read = futures::stream::iter(chunks.into_iter().map(Ok::<Bytes, axum::Error>));
                return Err(Body::from_stream(read.chain(futures::stream::once(async move { Err(error) }))));
            }
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => Bytes::from(chunks.concat()),
    })
}

/// Sends the request through the route's cache: a hit answers from memory or Redis, a miss
/// goes upstream once however many ask at the same time.
pub(crate) async fn through_cache<F, Fut>(
    plane: &DataPlane,
    route: &CompiledRoute,
    request: Request,
    tenant: &str,
    children: crate::spans::ChildSpans<'_>,
    forward: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let edge = &plane.edge;
    let policy = &route.route.cache;
    if !cacheable_request(&route.route, request.method(), request.headers()) {
        edge.cache_counters.bypass.inc();
        return with_status(forward(request).await, "BYPASS");
    }
    let vary: Vec<(String, String)> = policy
        .vary_headers
        .iter()
        .map(|name| {
            let name = name.as_str().to_ascii_lowercase();
            let value = request.headers().get(name.as_str()).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            (name, value)
        })
        .collect();
    let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let key = CacheKey::new(request.method().as_str(), path, tenant, vary);
    let lookup = edge.cache.get_observed(&key, || children.start("cache.get", "redis")).await;
    edge.count_lookup(&lookup);
    if let Lookup::Hit { entry, .. } = lookup {
        route.metrics.cache_hits.inc();
        return from_entry(&entry, "HIT");
    }
    route.metrics.cache_misses.inc();
    let guard = match edge.cache.join(&key).await {
        Flight::Shared(entry) => {
            edge.cache_counters.coalesced.inc();
            return from_entry(&entry, "MISS");
        }
        Flight::Alone => return with_status(forward(request).await, "MISS"),
        Flight::Leader(guard) => guard,
    };
    let response = forward(request).await;
    let (parts, body) = response.into_parts();
    let bytes = match buffer(body, MAX_ENTRY_BYTES).await {
        Ok(bytes) => bytes,
        Err(streaming) => {
            guard.complete(None);
            return with_status(Response::from_parts(parts, streaming), "MISS");
        }
    };
    let stored_at_ms = now_ms();
    let ttl = storable_for(&route.route, parts.status, &parts.headers);
    let mut tags: Vec<String> = policy.tags.iter().map(|t| t.to_string()).collect();
    if let Some(tag_header) = &policy.tag_header {
        for value in parts.headers.get_all(tag_header.as_str()) {
            if let Ok(value) = value.to_str() {
                tags.extend(value.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from));
            }
        }
    }
    tags.sort();
    tags.dedup();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != header::AGE && name.as_str() != "x-cache-status")
        .map(|(name, value)| (name.as_str().to_string(), Bytes::copy_from_slice(value.as_bytes())))
        .collect();
    let entry = CachedResponse {
        status: parts.status.as_u16(),
        headers,
        body: bytes,
        tags,
        route: route.route.id.to_string(),
        stored_at_ms,
        expires_at_ms: stored_at_ms + ttl.map(|t| t.as_millis() as i64).unwrap_or(0),
    };
    let entry = Arc::new(entry);
    if ttl.is_some() {
        edge.cache.put_shared(&key, entry.clone()).await;
    }
    guard.complete(Some(entry.clone()));
    from_entry(&entry, "MISS")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::test_route as route;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn storability_follows_status_cache_control_and_cookies() {
        let r = route(json!({"enabled": true, "ttl_seconds": 60}));
        assert_eq!(storable_for(&r, StatusCode::OK, &headers(&[])), Some(Duration::from_secs(60)));
        assert_eq!(storable_for(&r, StatusCode::NOT_FOUND, &headers(&[])), Some(Duration::from_secs(60)));
        assert_eq!(storable_for(&r, StatusCode::INTERNAL_SERVER_ERROR, &headers(&[])), None);
        assert_eq!(storable_for(&r, StatusCode::CREATED, &headers(&[])), None);
        assert_eq!(storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "private, max-age=600")])), None);
        assert_eq!(storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "no-store")])), None);
        assert_eq!(storable_for(&r, StatusCode::OK, &headers(&[("set-cookie", "a=b")])), None);
        assert_eq!(
            storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "public, max-age=5")])),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "max-age=5, s-maxage=20")])),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "max-age=600")])),
            Some(Duration::from_secs(60)),
            "an upstream never lengthens the route's TTL"
        );
        assert_eq!(storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "max-age=0")])), None);
    }

    #[test]
    fn requests_bypass_the_cache_when_they_ask_or_the_method_is_not_cached() {
        let r = route(json!({"enabled": true, "methods": ["GET"]}));
        assert!(cacheable_request(&r, &Method::GET, &headers(&[])));
        assert!(!cacheable_request(&r, &Method::HEAD, &headers(&[])));
        assert!(!cacheable_request(&r, &Method::GET, &headers(&[("cache-control", "no-cache")])));
        assert!(!cacheable_request(&r, &Method::GET, &headers(&[("pragma", "no-cache")])));
    }

    #[tokio::test]
    async fn buffering_keeps_every_byte_past_the_limit() {
        let small = buffer(Body::from("hello"), 10).await.unwrap();
        assert_eq!(small, Bytes::from("hello"));
        let chunks = futures::stream::iter(["ab", "cd", "ef"].map(|c| Ok::<_, std::io::Error>(Bytes::from(c))));
        let large = buffer(Body::from_stream(chunks), 3).await.unwrap_err();
        let all = axum::body::to_bytes(large, 100).await.unwrap();
        assert_eq!(all, Bytes::from("abcdef"));
    }
}
