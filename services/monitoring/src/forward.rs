//! Pushed samples reach the leader wherever they are pushed. Rules are evaluated by the
//! replica holding the evaluation lease (`lease.rs`) over its own series store, so a push
//! taken by a follower would never be judged. The leader records where it is reached when
//! it takes the lease; followers read that on their lease check, every second (and at once
//! when a push comes before they have read it), and pass a `pushMetricSamples` on to the
//! leader as it came (the caller's bearer token included), answering with the leader's
//! answer; what the leader took, the follower takes too, so
//! that it answers `listMetrics` with it and has it when it takes over. With no leader to
//! reach (a fail-over under way) a follower answers 503 with `Retry-After`.
//!
//! A push passed on is marked (`Via`, RFC 9110 §7.6.3): a follower that receives a marked
//! push answers 503 naming the problem instead of passing it on again, so a leader address
//! that reaches a follower (a load balancer's, say) cannot make replicas bounce a push
//! between them.

use crate::monitor::Core;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pake_api_runtime::ApiError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The operation forwarded.
const PUSH_PATH: &str = "/api/v1/metrics/samples";

/// What a replica adds to the `Via` of a push it passes on.
const VIA: &str = "1.1 pake-monitoring";

/// The most a forwarded push may carry, as the generated router takes.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How long a forwarded push may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// When a follower with no leader to reach asks the caller to try again, in seconds: a
/// fail-over takes about a second.
const RETRY_AFTER: u64 = 1;

/// Where this replica and the leader are reached.
pub struct Leadership {
    own: Mutex<String>,
    leader: Mutex<Option<String>>,
    client: reqwest::Client,
}

impl Leadership {
    pub fn new(own: String) -> Leadership {
        let client = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap_or_default();
        Leadership { own: Mutex::new(own), leader: Mutex::new(None), client }
    }

    /// Where other replicas reach this one.
    pub fn own(&self) -> String {
        self.own.lock().expect("leadership lock").clone()
    }

    /// Sets where other replicas reach this one (known once its listener is bound).
    pub fn set_own(&self, url: String) {
        *self.own.lock().expect("leadership lock") = url;
    }

    /// Where the leader is reached, as last read from the store.
    pub fn leader(&self) -> Option<String> {
        self.leader.lock().expect("leadership lock").clone()
    }

    pub fn set_leader(&self, url: Option<String>) {
        *self.leader.lock().expect("leadership lock") = url;
    }
}

/// The router's layer: a push to a follower goes to the leader; everything else, and
/// everything on the leader, is served here.
pub async fn pushes_to_leader(
    State((core, leadership)): State<(Arc<Core>, Arc<Leadership>)>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST || request.uri().path() != PUSH_PATH || core.is_leader() {
        return next.run(request).await;
    }
    let leader = match leadership.leader() {
        Some(url) => Some(url),
        // Not read yet (this replica has just started, or the leader has just taken the
        // lease): read it now rather than wait for the next lease check.
        None => match core.db.leader().await {
            Ok(url) => {
                leadership.set_leader(url.clone());
                url
            }
            Err(error) => {
                tracing::debug!(%error, "the leader's address could not be read");
                None
            }
        },
    };
    let Some(leader) = leader.filter(|url| *url != leadership.own()) else { return no_leader() };
    if passed_on(request.headers()) {
        return ApiError::unavailable(
            format!(
                "a push passed on by another monitoring replica reached this one, which does not lead: the \
                 leader's recorded address {leader} reaches a follower; each replica's advertised address \
                 (PAKE_MONITORING_ADVERTISE_URL) must reach that replica itself, not a load balancer"
            ),
            RETRY_AFTER,
        )
        .into_response();
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
            .into_response();
    };
    let mut forwarded =
        leadership.client.post(format!("{}{PUSH_PATH}", leader.trim_end_matches('/'))).body(body.clone());
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = parts.headers.get(&name) {
            forwarded = forwarded.header(name, value);
        }
    }
    let mut via: Vec<&str> = parts.headers.get_all(header::VIA).iter().filter_map(|v| v.to_str().ok()).collect();
    via.push(VIA);
    forwarded = forwarded.header(header::VIA, via.join(", "));
    let answer = match forwarded.send().await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::debug!(%error, %leader, "a push could not be passed on to the leader");
            return no_leader();
        }
    };
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::LOCATION, header::RETRY_AFTER] {
        if let Some(value) = answer.headers().get(&name) {
            headers.insert(name, value.clone());
        }
    }
    let answer = match answer.bytes().await {
        Ok(bytes) => (status, headers, Body::from(bytes)).into_response(),
        Err(error) => {
            tracing::debug!(%error, %leader, "the leader's answer to a push was cut short");
            return no_leader();
        }
    };
    if status.is_success() {
        // Taken here too; the leader's answer is the one given.
        let _ = next.run(Request::from_parts(parts, Body::from(body))).await;
    }
    answer
}

/// Whether a monitoring replica passed this request on already.
fn passed_on(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|hop| hop.trim().eq_ignore_ascii_case(VIA))
}

fn no_leader() -> Response {
    ApiError::unavailable("no monitoring leader to take the samples (a fail-over is under way)", RETRY_AFTER)
        .into_response()
}
