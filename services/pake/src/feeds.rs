//! What the services of this process send to services of the platform: the gateway's
//! request samples (to the performance service) and finished spans (to the monitoring
//! service's trace store), in process when that service runs here, else through its API.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The performance service of this process, where the gateway's request samples go.
#[derive(Default)]
pub struct InProcessSamples(pub std::sync::OnceLock<Arc<pake_performance::Performance>>);

impl std::fmt::Debug for InProcessSamples {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("InProcessSamples").field("started", &self.0.get().is_some()).finish()
    }
}

impl pake_gateway::samples::SampleSink for InProcessSamples {
    fn deliver(
        &self,
        samples: Vec<pake_gateway::samples::RequestSample>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let performance = self.0.get().ok_or("the performance service has not started")?;
            // The samples as ingestion reads them, checked as the contract's batch would
            // be, without building that batch.
            let mut checked = Checked::default();
            let views = samples.iter().filter_map(|sample| checked.view(sample).map(|(view, _)| view));
            performance.ingest_samples(views).await.map(drop).map_err(|error| error.to_string())
        })
    }

    /// The service keeps sketches by the finest tier's buckets: the gateway folds by them.
    fn folding(&self) -> Option<pake_gateway::samples::Folding> {
        Some(pake_gateway::samples::Folding {
            bucket_ms: pake_performance::tiers::TIERS[0].millis(),
            counts: Checked::carries,
        })
    }

    fn deliver_folded(
        &self,
        folded: Vec<pake_gateway::samples::Folded>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let performance = self.0.get().ok_or("the performance service has not started")?;
            let mut checked = Checked::default();
            let views = folded.iter().filter_map(|fold| {
                let (service, route) = checked.names(&fold.labels)?;
                Some(pake_performance::FoldedRef {
                    service,
                    route,
                    status_class: fold.status_class,
                    bucket_ms: fold.bucket_ms,
                    latencies: &fold.latencies,
                })
            });
            performance.ingest_folded(views).await.map(drop).map_err(|error| error.to_string())
        })
    }
}

/// An HTTP client for another process's service API, carrying a token of this
/// process's key ring with the scopes it needs, renewed well before the token ends.
struct ServiceHttp {
    url: String,
    issuer: pake_tokens::TokenIssuer,
    subject: &'static str,
    scopes: &'static [&'static str],
    /// The client and until when to use it.
    client: std::sync::Mutex<Option<(reqwest::Client, Instant)>>,
}

impl ServiceHttp {
    const TOKEN_TTL: Duration = Duration::from_secs(3600);

    fn new(
        url: &str,
        issuer: pake_tokens::TokenIssuer,
        subject: &'static str,
        scopes: &'static [&'static str],
    ) -> ServiceHttp {
        let url = url.trim_end_matches('/').to_string();
        ServiceHttp { url, issuer, subject, scopes, client: std::sync::Mutex::new(None) }
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        let mut cached = self.client.lock().map_err(|_| "a sender panicked")?;
        if let Some((client, until)) = &*cached
            && Instant::now() < *until
        {
            return Ok(client.clone());
        }
        let token = self.issuer.issue(self.subject, None, self.scopes, Self::TOKEN_TTL);
        let mut headers = reqwest::header::HeaderMap::new();
        let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        *cached = Some((http.clone(), Instant::now() + Self::TOKEN_TTL - Duration::from_secs(300)));
        Ok(http)
    }
}

/// The performance service of another process, where the gateway's request samples go
/// through its API (the generated client).
pub struct RemoteSamples(ServiceHttp);

impl std::fmt::Debug for RemoteSamples {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("RemoteSamples").field("url", &self.0.url).finish_non_exhaustive()
    }
}

impl RemoteSamples {
    pub fn new(url: &str, issuer: pake_tokens::TokenIssuer) -> RemoteSamples {
        RemoteSamples(ServiceHttp::new(url, issuer, "pake-gateway", &["performance:write"]))
    }

    fn client(&self) -> Result<pake_performance_client::Client, String> {
        Ok(pake_performance_client::Client::new_with_client(&self.0.url, self.0.client()?))
    }
}

impl pake_gateway::samples::SampleSink for RemoteSamples {
    fn deliver(
        &self,
        samples: Vec<pake_gateway::samples::RequestSample>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let client = self.client()?;
            // The contract's largest batch at a time.
            for chunk in samples.chunks(pake_gateway::samples::MAX_BATCH) {
                let batch = sample_batch(chunk);
                if batch.samples.is_empty() {
                    continue;
                }
                client.ingest_samples().body(batch).send().await.map_err(|error| error.to_string())?;
            }
            Ok(())
        })
    }
}

/// A batch's names as the performance contract's types: a batch names few services and
/// routes many times, so each is checked against the contract's pattern once per batch,
/// not once per sample (none: outside the pattern).
#[derive(Default)]
struct Checked<'a> {
    services: std::collections::HashMap<&'a str, Option<pake_performance_server::types::ServiceName>>,
    routes: std::collections::HashMap<&'a str, Option<pake_performance_server::types::RoutePath>>,
}

impl<'a> Checked<'a> {
    /// A route's service and prefix as ingestion reads them: none when the contract cannot
    /// carry the service's name; a prefix outside the pattern is left out (empty).
    fn names(&mut self, labels: &'a pake_gateway::samples::SampleLabels) -> Option<(&'a str, &'a str)> {
        let (service, route) = (labels.service.as_str(), labels.route.as_str());
        self.services.entry(service).or_insert_with(|| service.parse().ok()).as_ref()?;
        let route_ok = self.routes.entry(route).or_insert_with(|| route.parse().ok()).is_some();
        Some((service, if route_ok { route } else { "" }))
    }

    /// Whether the contract's samples can carry `method`.
    fn carries(method: &axum::http::Method) -> bool {
        method.as_str().parse::<pake_performance_server::types::HttpMethod>().is_ok()
    }

    /// `sample` as ingestion reads it, with its method; none when the contract cannot carry
    /// it (a method it does not list, a service name outside its pattern). A route outside
    /// the pattern is left out of the sample.
    fn view(
        &mut self,
        sample: &'a pake_gateway::samples::RequestSample,
    ) -> Option<(pake_performance::SampleRef<'a>, pake_performance_server::types::HttpMethod)> {
        let method = sample.method.as_str().parse().ok()?;
        let (service, route) = self.names(&sample.labels)?;
        let received = sample.received();
        let view = pake_performance::SampleRef {
            service,
            route,
            status: i64::from(sample.status),
            latency_ms: sample.latency_ms(),
            at_ms: chrono::DateTime::<chrono::Utc>::from(received).timestamp_millis(),
        };
        Some((view, method))
    }
}

/// The gateway's samples as the performance contract's batch: what [`Checked::view`]
/// keeps, with the instance that answered.
pub fn sample_batch(samples: &[pake_gateway::samples::RequestSample]) -> pake_performance_server::types::SampleBatch {
    use pake_performance_server::types;
    let mut checked = Checked::default();
    let samples = samples
        .iter()
        .filter_map(|sample| {
            let (view, method) = checked.view(sample)?;
            Some(types::Sample {
                instance_id: sample.instance.and_then(|id| types::SampleInstanceId::try_from(id.to_string()).ok()),
                latency_ms: view.latency_ms,
                method,
                route: checked.routes.get(view.route).cloned().flatten(),
                service: checked.services.get(view.service).cloned().flatten()?,
                status: view.status,
                timestamp: chrono::DateTime::from_timestamp_millis(view.at_ms)?,
            })
        })
        .collect();
    types::SampleBatch { samples }
}

/// The monitoring service of another process, where this process's spans go through its
/// API (`ingestSpans`, the generated client), so that its trace store shows them.
pub struct RemoteSpans(ServiceHttp);

impl RemoteSpans {
    /// The contract's largest batch.
    const MAX_BATCH: usize = 1000;

    pub fn new(url: &str, issuer: pake_tokens::TokenIssuer) -> RemoteSpans {
        RemoteSpans(ServiceHttp::new(url, issuer, "pake-tracing", &["monitoring:write"]))
    }
}

impl pake_trace::SpanSink for RemoteSpans {
    fn deliver<'a>(
        &'a self,
        batch: &'a [pake_trace::FinishedSpan],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let client = pake_monitoring_client::Client::new_with_client(&self.0.url, self.0.client()?);
            for chunk in batch.chunks(Self::MAX_BATCH) {
                let body = span_batch(chunk)?;
                client.ingest_spans().body(body).send().await.map_err(|error| error.to_string())?;
            }
            Ok(())
        })
    }
}

/// Finished spans as the monitoring contract's batch: the store's view of each span
/// (cut to the contract's bounds) is the contract's `Span`, which `SpanIngest` accepts.
fn span_batch(spans: &[pake_trace::FinishedSpan]) -> Result<pake_monitoring_client::types::SpanBatch, String> {
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|finished| {
            let record = pake_monitoring::otel::record(&finished.service, &finished.span);
            pake_monitoring::traces::contract::span_view(&record)
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "spans": spans })).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use pake_gateway::samples::RequestSample;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_sample_carries_the_instance_that_answered_as_the_contract_s_instance_id() {
        let instance = uuid::Uuid::new_v4();
        let sample = |instance| RequestSample {
            labels: pake_gateway::samples::SampleLabels::new("search", "/search"),
            method: axum::http::Method::GET,
            status: 200,
            latency: Duration::from_millis(3),
            instance,
            at: SystemTime::now(),
        };
        let batch = super::sample_batch(&[sample(Some(instance)), sample(None)]);
        let ids: Vec<_> = batch.samples.iter().map(|sample| sample.instance_id.as_deref().cloned()).collect();
        assert_eq!(ids, [Some(instance.to_string()), None]);
    }
}
