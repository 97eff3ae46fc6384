//! The token endpoint publishes its limit per source address: every answer (the token,
//! 400, 401, 422, 429) carries `RateLimit-Policy` (the GCRA's rate item and burst item,
//! as route policies write theirs) and `RateLimit` (the caller's standing), and a client
//! that keeps within what is published is never refused.

mod support;

use conformance::support::Backend;
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// `rate` token requests per second, 2 × `rate` at once: what a gateway started with
/// `PAKE_TOKEN_REQUESTS_PER_SECOND=5` publishes. T = 0.2 s, so the 11 of a burst take
/// 2.2 s, published as 3, to come back.
const FIVE: &str = "\"token-issuance\";q=5;w=1, \"token-issuance-burst\";q=11;w=3";

/// The caller's remaining quota, from an answer's `RateLimit`.
fn remaining(response: &reqwest::Response) -> u64 {
    let field = response.headers()["ratelimit"].to_str().unwrap();
    pake_ratelimit::published::remaining(field, "token-issuance").unwrap_or_else(|| panic!("{field}"))
}

#[tokio::test]
async fn every_answer_of_the_token_endpoint_publishes_its_limit_and_the_callers_standing() {
    let mut options = options();
    options.token_requests_per_second = 5;
    let platform = Platform::start_with(Backend::Sqlite, options).await;
    let gateway = platform.gateway_server.url();
    let created: Value = conformance::http_client_with_token(&token())
        .post(format!("{gateway}/v1/admin/clients"))
        .json(&json!({"name": "paced", "tenant": "acme", "scopes": ["arxiv:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (client_id, secret) = (created["client_id"].as_str().unwrap(), created["client_secret"].as_str().unwrap());
    let url = format!("{gateway}/v1/auth/token");
    let post = |body: Value| platform.http.post(&url).json(&body).send();
    let grant = json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret});

    // A token, a scope the client does not hold, a wrong secret, a body the contract
    // refuses: each answer names the limit, and each spends one request of the burst.
    let wrong_scope = json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        "scope": "arxiv:write"});
    let wrong_secret = json!({"grant_type": "client_credentials", "client_id": client_id,
        "client_secret": pake_tokens::random_token(32)});
    let mut standing = Vec::new();
    for (body, status) in [(grant.clone(), 200), (wrong_scope, 400), (wrong_secret, 401), (json!({}), 422)] {
        let response = post(body).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{:?}", response.headers());
        let headers = response.headers();
        assert_eq!(headers["ratelimit-policy"], FIVE, "a {status} publishes the limit");
        assert_eq!(headers["ratelimit-limit"], "11", "a {status}: the burst item's quota");
        standing.push(remaining(&response));
    }
    // Fresh, the address may send 11 at once: after the first, 10 remain; never more
    // after that (each request spends one, and the 0.2 s interval earns them back).
    assert_eq!(standing[0], 10, "{standing:?}");
    assert!(standing.iter().all(|r| *r <= 10), "{standing:?}");

    // What is published reads back as the limit the gateway was given.
    let published = pake_ratelimit::published::read(FIVE, "token-issuance").unwrap();
    assert_eq!((published.rate, published.period_secs, published.burst), (5, 1, 10));

    // Spent: the 429 carries the same fields, nothing remaining, and Retry-After.
    let mut refused = None;
    for _ in 0..40 {
        let response = post(json!({})).await.unwrap();
        if response.status().as_u16() == 429 {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("the address's burst runs out");
    let headers = refused.headers();
    assert_eq!(headers["ratelimit-policy"], FIVE);
    assert_eq!(remaining(&refused), 0);
    assert!(headers["retry-after"].to_str().unwrap().parse::<u64>().is_ok_and(|s| s == 1), "{headers:?}");
    let reset: u64 = headers["ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&reset), "the whole burst is back within its 3 s window: {reset}");

    // A client keeping to the burst item is never refused: 11 at once, again and again
    // one window (3 s) later, each time from wherever the last left the address.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for round in 0..2 {
        let answers = futures::future::join_all((0..11).map(|_| post(json!({})))).await;
        let statuses: Vec<u16> = answers.iter().map(|a| a.as_ref().unwrap().status().as_u16()).collect();
        assert!(statuses.iter().all(|s| *s == 422), "round {round}: {statuses:?}");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // …and the token still comes, with its fields.
    let response = post(grant).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["ratelimit-policy"], FIVE);
    assert_eq!(remaining(&response), 10, "a whole burst was back");
}
