//! The token endpoint's timing, measured on a running gateway: nothing in how long a refusal
//! takes may tell a client id that exists from one that does not. Alone in its test binary,
//! so that no other test's Argon2 runs share the cores while it measures.

mod support;

use conformance::support::Backend;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_client_costs_what_a_wrong_secret_for_an_active_client_costs() {
    // Throttling is not what this measures: no refusal here may be a fast 429.
    let mut options = options();
    options.token_requests_per_second = 1_000_000;
    let platform = Platform::start_with(Backend::Postgres, options).await;
    let gateway = platform.gateway_server.url();
    let created: Value = conformance::http_client_with_token(&token())
        .post(format!("{gateway}/v1/admin/clients"))
        .json(&json!({"name": "timed", "tenant": "acme", "scopes": ["arxiv:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = created["client_id"].as_str().unwrap().to_string();
    let secret = created["client_secret"].as_str().unwrap().to_string();
    let grant = |client_id: &str, secret: &str| json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret});
    let url = format!("{gateway}/v1/auth/token");
    let timed = |body: Value| {
        let request = platform.http.post(&url).json(&body);
        async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            response.bytes().await.unwrap();
            (status, started.elapsed())
        }
    };

    // The client has had a grant: whatever the gateway remembers of it, it now remembers.
    assert_eq!(timed(grant(&client_id, &secret)).await.0, 200);

    // Interleaved, so that whatever else the machine does falls on both kinds alike; the
    // first rounds only warm up connections and caches.
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    for round in 0..48 {
        let guess = grant(&client_id, &pake_tokens::random_token(32));
        let stranger = grant(&pake_gateway::secrets::new_client_id(), &pake_tokens::random_token(32));
        let (first, second) = if round % 2 == 0 { (guess, stranger) } else { (stranger, guess) };
        let (a, b) = (timed(first).await, timed(second).await);
        assert_eq!((a.0, b.0), (401, 401));
        let (guess, stranger) = if round % 2 == 0 { (a.1, b.1) } else { (b.1, a.1) };
        if round >= 8 {
            wrong.push(guess);
            unknown.push(stranger);
        }
    }
    let (wrong, unknown) = (median(wrong), median(unknown));
    let ratio = wrong.max(unknown).as_secs_f64() / wrong.min(unknown).as_secs_f64();
    println!(
        "token endpoint medians over 40 each: wrong secret {wrong:?}, unknown client {unknown:?}, ratio {ratio:.2}"
    );
    assert!(ratio < 3.0, "timing tells clients apart: wrong secret {wrong:?}, unknown client {unknown:?}");

    // The client still gets its tokens, and quickly once its secret has been verified.
    let (status, first) = timed(grant(&client_id, &secret)).await;
    assert_eq!(status, 200);
    let (status, again) = timed(grant(&client_id, &secret)).await;
    assert_eq!(status, 200);
    println!("correct secret: {first:?}, then {again:?}");

    // Every answer is counted by its result.
    let metrics = platform.get("/metrics").await.text().await.unwrap();
    for (result, count) in [("issued", 3), ("refused", 96)] {
        let line = format!("pake_gateway_token_requests_total{{result=\"{result}\"}} {count}");
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
}
