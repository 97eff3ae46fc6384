//! The demo upstream fleet: the research services (search, documents, summarise) as small
//! real HTTP servers with configurable latency, jitter and error rate. Search and document
//! answers are cacheable (`Cache-Control`, and `Cache-Tag` for tag invalidation); summaries
//! are writes.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How every upstream of the fleet answers.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Base service time of each answer.
    pub latency: Duration,
    /// Up to this much more, uniformly at random.
    pub jitter: Duration,
    /// Share of answers that are 503 (0.0 to 1.0).
    pub error_rate: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour { latency: Duration::from_millis(20), jitter: Duration::from_millis(30), error_rate: 0.0 }
    }
}

/// One running upstream.
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Requests it has answered.
    pub hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The three research services.
pub struct Fleet {
    pub search: Upstream,
    pub documents: Upstream,
    pub summarise: Upstream,
}

#[derive(Clone)]
struct Shared {
    behaviour: Behaviour,
    hits: Arc<AtomicU64>,
}

impl Shared {
    /// Waits the service time; `Err` is the 503 the error rate calls for.
    async fn serve(&self) -> Result<(), Response> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let jitter = self.behaviour.jitter.mul_f64(rand::random::<f64>());
        tokio::time::sleep(self.behaviour.latency + jitter).await;
        if rand::random::<f64>() < self.behaviour.error_rate {
            let body = json!({"code": "unavailable", "message": "the demo upstream failed on purpose"});
            return Err((StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response());
        }
        Ok(())
    }
}

fn cacheable(body: Value, max_age: u32, tag: &str) -> Response {
    let mut response = axum::Json(body).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    if let Ok(value) = HeaderValue::from_str(tag) {
        headers.insert("cache-tag", value);
    }
    response
}

async fn search(State(shared): State<Shared>, Query(query): Query<HashMap<String, String>>) -> Response {
    if let Err(failed) = shared.serve().await {
        return failed;
    }
    let q = query.get("q").cloned().unwrap_or_default();
    let results: Vec<Value> = (0..10)
        .map(|n| json!({"id": format!("doc-{}", (q.len() * 31 + n * 7) % 2000), "title": format!("Result {n} for {q}"), "score": 1.0 / (n as f64 + 1.0)}))
        .collect();
    cacheable(json!({"query": q, "total": 10, "results": results}), 60, "search")
}

async fn document(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    if let Err(failed) = shared.serve().await {
        return failed;
    }
    let text = "Large language models are evaluated on retrieval-augmented research tasks. ".repeat(12);
    cacheable(
        json!({"id": id, "title": format!("Document {id}"), "abstract": text}),
        300,
        &format!("documents, doc:{id}"),
    )
}

async fn summarise(State(shared): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(failed) = shared.serve().await {
        return failed;
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let tenant = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let summary = json!({
        "id": uuid::Uuid::new_v4(), "document_id": request["document_id"], "summary": "A short summary.",
        "request_id": tenant,
    });
    (StatusCode::CREATED, axum::Json(summary)).into_response()
}

async fn start(
    name: &'static str,
    ip: IpAddr,
    behaviour: Behaviour,
    router: Router<Shared>,
) -> std::io::Result<Upstream> {
    let hits = Arc::new(AtomicU64::new(0));
    // A health URL, as every real service has: the monitoring service checks it, and an
    // instance without one leaves discovery.
    let router = router.route("/health", get(|| async { "ok" }));
    let router = router.with_state(Shared { behaviour, hits: hits.clone() });
    let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            eprintln!("demo upstream {name} stopped: {error}");
        }
    });
    Ok(Upstream { name, addr, hits, task })
}

impl Fleet {
    /// Starts the three services on ephemeral ports of `ip`.
    pub async fn start(ip: IpAddr, behaviour: Behaviour) -> std::io::Result<Fleet> {
        Ok(Fleet {
            search: start("research-search", ip, behaviour, Router::new().route("/search", get(search))).await?,
            documents: start(
                "research-documents",
                ip,
                behaviour,
                Router::new().route("/documents/{id}", get(document)),
            )
            .await?,
            summarise: start("research-summarise", ip, behaviour, Router::new().route("/summaries", post(summarise)))
                .await?,
        })
    }

    pub fn upstreams(&self) -> [&Upstream; 3] {
        [&self.search, &self.documents, &self.summarise]
    }
}
