//! Delivery of notifications to webhook receivers, in the shape of Alertmanager's webhook
//! payload (version "4"), so that every tool that takes Alertmanager webhooks takes ours.
//!
//! Each receiver has its own queue and worker: a receiver that is down or slow delays no
//! other receiver and no evaluation. A delivery is retried with exponential backoff on
//! connection errors, timeouts and 5xx answers, up to the receiver's `max_retries`;
//! redirects are not followed; at most [`MAX_ANSWER_BYTES`] of an answer are read.

use crate::model::{AlertRecord, ReceiverRecord};
use crate::rules::AlertState;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Notifications waiting for one receiver; beyond, the oldest is given up.
pub const QUEUE_DEPTH: usize = 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One notification for one receiver: a rule's alerts that changed state.
#[derive(Debug, Clone)]
pub struct Notification {
    pub receiver_id: uuid::Uuid,
    pub rule_id: uuid::Uuid,
    pub rule_name: String,
    pub alerts: Vec<AlertRecord>,
    /// The firing alerts this notification announces for the first time: recorded as
    /// notified once every receiver has had theirs (or given up on it).
    pub announces: Vec<uuid::Uuid>,
    /// The resolved alerts this notification announces as resolved: recorded as notified
    /// resolved once every receiver has had theirs (or given up on it).
    pub resolves: Vec<uuid::Uuid>,
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status: Option<u16>,
    pub latency: Duration,
    pub error: Option<String>,
}

impl Attempt {
    pub fn delivered(&self) -> bool {
        self.error.is_none()
    }

    /// Whether another attempt may succeed: no answer, a timeout, or a 5xx.
    fn retryable(&self) -> bool {
        !self.delivered() && self.status.is_none_or(|s| s >= 500)
    }
}

/// The HTTP client deliveries use: no redirects, no proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("pake-monitoring/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the notification client builds")
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Labels every alert carries the same value of.
fn common(maps: &[&BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let Some(first) = maps.first() else { return BTreeMap::new() };
    first
        .iter()
        .filter(|(k, v)| maps.iter().all(|m| m.get(*k) == Some(*v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Alertmanager's webhook body (`notify/webhook`'s `Message`, version "4"), with the
/// fields of this service's own `Alert` kept as extras under `pake`.
pub fn payload(
    receiver: &str,
    rule_id: uuid::Uuid,
    rule_name: &str,
    alerts: &[AlertRecord],
    external_url: &str,
) -> Value {
    let status = if alerts.iter().any(|a| a.state == AlertState::Firing) { "firing" } else { "resolved" };
    let group_labels = BTreeMap::from([("alertname".to_string(), rule_name.to_string())]);
    let labels: Vec<&BTreeMap<String, String>> = alerts.iter().map(|a| &a.labels).collect();
    let annotations: Vec<&BTreeMap<String, String>> = alerts.iter().map(|a| &a.annotations).collect();
    let rendered: Vec<Value> = alerts
        .iter()
        .map(|a| {
            json!({
                "status": if a.state == AlertState::Resolved { "resolved" } else { "firing" },
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(a.fired_at.unwrap_or(a.active_since)),
                // Alertmanager's zero time for an alert that has not ended.
                "endsAt": a.resolved_at.map(rfc3339).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                "generatorURL": format!("{external_url}/api/v1/alerts/{}", a.id),
                "fingerprint": a.fingerprint,
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": format!("{{}}/{{}}:{{alertname=\"{rule_name}\"}}/{rule_id}"),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common(&labels),
        "commonAnnotations": common(&annotations),
        "externalURL": external_url,
        "alerts": rendered,
    })
}

/// One POST of `body` to the receiver, within its timeout, reading at most
/// [`MAX_ANSWER_BYTES`] of the answer.
pub async fn attempt(
    client: &reqwest::Client,
    receiver: &ReceiverRecord,
    body: &Value,
    loopback_only: bool,
) -> Attempt {
    let started = Instant::now();
    if loopback_only && !is_loopback(&receiver.url) {
        return Attempt {
            status: None,
            latency: started.elapsed(),
            error: Some("deliveries are limited to loopback addresses by this service's configuration".into()),
        };
    }
    let timeout = Duration::from_millis(receiver.timeout_ms);
    let mut request = client.post(&receiver.url).json(body);
    for (name, value) in &receiver.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let outcome = tokio::time::timeout(timeout, async {
        let mut response = request.send().await?;
        let status = response.status();
        let mut read = 0usize;
        while read < MAX_ANSWER_BYTES {
            match response.chunk().await? {
                Some(chunk) => read += chunk.len(),
                None => break,
            }
        }
        Ok::<_, reqwest::Error>(status)
    })
    .await;
    let latency = started.elapsed();
    match outcome {
        Ok(Ok(status)) if status.is_success() => Attempt { status: Some(status.as_u16()), latency, error: None },
        Ok(Ok(status)) => Attempt {
            status: Some(status.as_u16()),
            latency,
            error: Some(format!("HTTP {} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))),
        },
        Ok(Err(error)) => Attempt { status: None, latency, error: Some(describe(&error)) },
        Err(_) => {
            Attempt { status: None, latency, error: Some(format!("no answer within {} ms", receiver.timeout_ms)) }
        }
    }
}

/// Whether `url` names this machine by a loopback literal or `localhost`.
pub fn is_loopback(url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(1024).collect()
}

/// Delivers with retries; returns the last attempt and how many retries it took.
pub async fn deliver(
    client: &reqwest::Client,
    receiver: &ReceiverRecord,
    body: &Value,
    loopback_only: bool,
) -> (Attempt, u32) {
    let mut backoff = FIRST_BACKOFF;
    let mut retries = 0;
    loop {
        let outcome = attempt(client, receiver, body, loopback_only).await;
        if !outcome.retryable() || retries >= receiver.max_retries {
            return (outcome, retries);
        }
        retries += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_alertmanagers_v4() {
        let now = Utc::now();
        let alert = AlertRecord {
            id: uuid::Uuid::new_v4(),
            rule_id: uuid::Uuid::new_v4(),
            rule_name: "down".into(),
            severity: "critical".into(),
            state: AlertState::Firing,
            labels: [("alertname".to_string(), "down".to_string()), ("instance_id".into(), "i".into())].into(),
            annotations: [("summary".to_string(), "i is down".to_string())].into(),
            value: 0.0,
            active_since: now,
            fired_at: Some(now),
            resolved_at: None,
            acknowledged_by: None,
            acknowledged_at: None,
            acknowledgement_comment: None,
            auto_healed_instance_id: None,
            fingerprint: "0123456789abcdef".into(),
            notified_firing: false,
            notified_resolved: false,
            owed_to: Vec::new(),
        };
        let body = payload("oncall", alert.rule_id, "down", &[alert], "http://127.0.0.1:9090");
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "firing");
        assert_eq!(body["groupLabels"]["alertname"], "down");
        assert_eq!(body["commonLabels"]["instance_id"], "i");
        assert_eq!(body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(body["alerts"][0]["fingerprint"], "0123456789abcdef");
        for field in ["receiver", "groupKey", "commonAnnotations", "externalURL", "truncatedAlerts"] {
            assert!(body.get(field).is_some(), "{field}");
        }
    }
}
