//! Route policies against real upstreams, in one process (embedded mode: no Redis): API
//! clients and token issuance, the token attack table and scopes, rate limits with their
//! headers, and the response cache with coalescing and invalidation. The same policies
//! across two `pake` processes sharing Redis are tested in `services/pake/tests`.

mod support;

use conformance::support::Backend;
use pake_gateway::GatewayOptions;
use pake_tokens::{Claims, KeyRing};
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// Gateway keys: a generated Ed25519 signing key; the tests' HS256 admin tokens still work.
fn ed25519_options() -> (GatewayOptions, KeyRing) {
    let (ring, _) = KeyRing::generate_ed25519().unwrap();
    let ring = ring.with_hs256_verification(SECRET).unwrap();
    (GatewayOptions::new(ring.clone()), ring)
}

async fn admin_post(platform: &Platform, path: &str, body: Value) -> reqwest::Response {
    conformance::http_client_with_token(&token())
        .post(format!("{}{path}", platform.gateway_server.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn issue(platform: &Platform, body: Value) -> reqwest::Response {
    platform.http.post(format!("{}/v1/auth/token", platform.gateway_server.url())).json(&body).send().await.unwrap()
}

/// A client in tenant `tenant` with `scopes`; returns (id, client_id, secret).
async fn client(
    platform: &Platform,
    name: &str,
    tenant: &str,
    scopes: &[&str],
    policy: Option<&str>,
) -> (String, String, String) {
    let mut spec = json!({"name": name, "tenant": tenant, "scopes": scopes});
    if let Some(policy) = policy {
        spec["rate_limit_policy_id"] = json!(policy);
    }
    let response = admin_post(platform, "/v1/admin/clients", spec).await;
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_string(),
        body["client_id"].as_str().unwrap().to_string(),
        body["client_secret"].as_str().unwrap().to_string(),
    )
}

async fn bearer(platform: &Platform, client_id: &str, secret: &str) -> String {
    let response =
        issue(platform, json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}))
            .await;
    assert_eq!(response.status().as_u16(), 200);
    response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_clients_get_tokens_for_their_scopes_and_lose_them_on_rotation_disable_and_delete() {
    let (options, _) = ed25519_options();
    let platform = Platform::start_with(Backend::Sqlite, options).await;
    let (id, client_id, secret) = client(&platform, "research-web", "acme", &["arxiv:read", "pubmed:read"], None).await;
    assert!(secret.len() >= 43, "256 bits or more");

    // Only an Argon2id hash is kept, and the API never shows the secret again.
    let stored = platform.gateway.policies.client_by_public_id(&client_id).await.unwrap().unwrap();
    assert!(stored.secret_hash.starts_with("$argon2id$"), "{}", stored.secret_hash);
    assert!(!stored.secret_hash.contains(&secret));
    let shown = platform
        .http
        .get(format!("{}/v1/admin/clients/{id}", platform.gateway_server.url()))
        .bearer_auth(token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!shown.contains(&secret) && !shown.contains("secret_hash"), "{shown}");

    // The grant: all scopes, or exactly the requested subset.
    let grant = |scope: Option<&str>, secret: &str| {
        let mut body = json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret});
        if let Some(scope) = scope {
            body["scope"] = json!(scope);
        }
        body
    };
    let response = issue(&platform, grant(None, &secret)).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["scope"], "arxiv:read pubmed:read");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let body: Value = issue(&platform, grant(Some("pubmed:read"), &secret)).await.json().await.unwrap();
    assert_eq!(body["scope"], "pubmed:read");

    // The token verifies with nothing but the published JWKS, and carries the tenant.
    let jwks: Value = platform.get("/v1/auth/jwks").await.json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["pake"]);
    let issued = body["access_token"].as_str().unwrap();
    let claims =
        jsonwebtoken::decode::<Claims>(issued, &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &validation)
            .unwrap()
            .claims;
    assert_eq!(
        (claims.sub.as_str(), claims.tenant.as_deref(), claims.iss.as_str()),
        (client_id.as_str(), Some("acme"), "pake")
    );

    // Refusals: a scope the client lacks is 400; a bad secret and an unknown client look alike.
    let response = issue(&platform, grant(Some("admin:write"), &secret)).await;
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "invalid_scope");
    let wrong = issue(&platform, grant(None, &pake_tokens::random_token(32))).await;
    assert_eq!(wrong.status().as_u16(), 401);
    let unknown = issue(
        &platform,
        json!({"grant_type": "client_credentials", "client_id": "pk_nobody", "client_secret": secret}),
    )
    .await;
    assert_eq!(unknown.status().as_u16(), 401);
    assert_eq!(wrong.json::<Value>().await.unwrap()["message"], unknown.json::<Value>().await.unwrap()["message"]);

    // Rotation: the old secret stops working at once, the new one works.
    let rotated: Value =
        admin_post(&platform, &format!("/v1/admin/clients/{id}/rotate-secret"), json!({})).await.json().await.unwrap();
    let fresh = rotated["client_secret"].as_str().unwrap();
    assert_ne!(fresh, secret);
    assert_eq!(issue(&platform, grant(None, &secret)).await.status().as_u16(), 401);
    assert_eq!(issue(&platform, grant(None, fresh)).await.status().as_u16(), 200);

    // Disabled, then deleted: no more tokens.
    let admin = conformance::http_client_with_token(&support::token());
    let url = format!("{}/v1/admin/clients/{id}", platform.gateway_server.url());
    let patched = admin.patch(&url).json(&json!({"disabled": true})).send().await.unwrap();
    assert_eq!(patched.status().as_u16(), 200);
    assert_eq!(issue(&platform, grant(None, fresh)).await.status().as_u16(), 401);
    admin.patch(&url).json(&json!({"disabled": false})).send().await.unwrap();
    assert_eq!(issue(&platform, grant(None, fresh)).await.status().as_u16(), 200);
    assert_eq!(admin.delete(&url).send().await.unwrap().status().as_u16(), 204);
    assert_eq!(issue(&platform, grant(None, fresh)).await.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_refuse_every_bad_token_and_tokens_without_their_scopes() {
    let (options, ring) = ed25519_options();
    let platform = Platform::start_with(Backend::Sqlite, options).await;
    let upstream = Upstream::start("papers", Behaviour::Ok).await;
    platform.service("papers", "round_robin", &[(upstream.port(), 100)], lenient_breaker()).await;
    platform
        .route(json!({"name": "papers", "path_prefix": "/papers", "methods": ["GET"], "api_version": "v1",
        "service": "papers", "required_scopes": ["arxiv:read"]}))
        .await;
    platform
        .route(json!({"name": "open", "path_prefix": "/open", "methods": ["GET"], "api_version": "v1",
        "service": "papers"}))
        .await;
    platform
        .route(json!({"name": "members", "path_prefix": "/members", "methods": ["GET"], "api_version": "v1",
        "service": "papers", "require_token": true}))
        .await;

    // Scopes need a token: saying otherwise is refused, not silently corrected.
    let contradiction = admin_post(
        &platform,
        "/v1/admin/routes",
        json!({"name": "bad", "path_prefix": "/bad",
        "methods": ["GET"], "api_version": "v1", "service": "papers", "required_scopes": ["arxiv:read"],
        "require_token": false}),
    )
    .await;
    assert_eq!(contradiction.status().as_u16(), 422);

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let good = Claims {
        sub: "pk_reader".into(),
        tenant: Some("acme".into()),
        scope: "arxiv:read".into(),
        iss: "pake".into(),
        aud: "pake".into(),
        exp: now + 600,
        nbf: now,
        iat: now,
        jti: "t".into(),
    };
    let issuer = ring.issuer();
    let valid = issuer.issue_claims(&good);
    let (stranger, _) = KeyRing::generate_ed25519().unwrap();
    let [header, claims, _] = <[&str; 3]>::try_from(valid.split('.').collect::<Vec<_>>()).unwrap();
    let foreign_signature = stranger.issuer().issue_claims(&good).rsplit('.').next().unwrap().to_string();
    let attacks: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("not bearer", Some(format!("Basic {valid}"))),
        ("malformed", Some("Bearer not-a-jwt".into())),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                issuer.issue_claims(&Claims { exp: now - 600, nbf: now - 1200, ..good.clone() })
            )),
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                issuer.issue_claims(&Claims { nbf: now + 600, exp: now + 1200, ..good.clone() })
            )),
        ),
        ("wrongly signed", Some(format!("Bearer {header}.{claims}.{foreign_signature}"))),
        ("unknown key", Some(format!("Bearer {}", stranger.issuer().issue_claims(&good)))),
        (
            "wrong audience",
            Some(format!("Bearer {}", issuer.issue_claims(&Claims { aud: "billing".into(), ..good.clone() }))),
        ),
        ("alg none", Some(format!("Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}."))),
        (
            "tampered claims",
            Some(format!("Bearer {header}.{}.{}", pake_tokens::random_token(40), valid.rsplit('.').next().unwrap())),
        ),
        (
            "hs256 with another secret",
            Some(format!(
                "Bearer {}",
                pake_tokens::TokenIssuer::hs256(b"another-secret-another-secret-xyz").unwrap().issue_claims(&good)
            )),
        ),
    ];
    let url = |path: &str| format!("{}{path}", platform.gateway_server.url());
    for (name, authorization) in &attacks {
        let mut request = platform.http.get(url("/v1/papers/1"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{name}");
        assert!(response.headers().contains_key("www-authenticate"), "{name}");
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {body}");
    }
    assert_eq!(upstream.hits(), 0, "no refused request reached the upstream");

    // A valid token without the scope is 403; with it, 200. Routes differ in what they need.
    let unscoped = issuer.issue_claims(&Claims { scope: "pubmed:read".into(), ..good.clone() });
    let get = |path: &'static str, token: Option<String>| {
        let mut request = platform.http.get(url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/v1/papers/1", Some(unscoped.clone())).await, 403);
    assert_eq!(get("/v1/papers/1", Some(valid.clone())).await, 200);
    assert_eq!(get("/v1/members/1", Some(unscoped.clone())).await, 200, "any valid token");
    assert_eq!(get("/v1/members/1", None).await, 401);
    assert_eq!(get("/v1/open/1", None).await, 200, "a public route needs nothing");
    assert_eq!(upstream.hits(), 3);

    // End to end: a client's issued token opens the route its scope names.
    let (_, client_id, secret) = client(&platform, "reader", "acme", &["arxiv:read"], None).await;
    let issued = bearer(&platform, &client_id, &secret).await;
    assert_eq!(get("/v1/papers/2", Some(issued)).await, 200);
    let metrics = platform.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("pake_gateway_auth_decisions_total{result=\"forbidden\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_with_retry_after_and_every_answer_carries_the_headers() {
    let (options, _) = ed25519_options();
    let platform = Platform::start_with(Backend::Sqlite, options).await;
    let upstream = Upstream::start("search", Behaviour::Ok).await;
    platform.service("search", "round_robin", &[(upstream.port(), 100)], lenient_breaker()).await;
    let policy: Value = admin_post(
        &platform,
        "/v1/admin/rate-limit-policies",
        json!({"name": "five", "algorithm": "gcra",
        "rate": 5, "period_seconds": 3600, "burst": 4, "scope": "per_tenant_route"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(policy["on_redis_unavailable"], "local", "the default is filled in");
    let tight: Value = admin_post(
        &platform,
        "/v1/admin/rate-limit-policies",
        json!({"name": "two-per-client",
        "algorithm": "sliding_window", "rate": 2, "period_seconds": 3600, "scope": "per_client"}),
    )
    .await
    .json()
    .await
    .unwrap();
    platform
        .route(json!({"name": "search", "path_prefix": "/search", "methods": ["GET"], "api_version": "v1",
        "service": "search", "rate_limit_policy_id": policy["id"]}))
        .await;
    platform
        .route(json!({"name": "private", "path_prefix": "/private", "methods": ["GET"], "api_version": "v1",
        "service": "search", "require_token": true}))
        .await;

    // Anonymous callers share their address's quota: 5 at once, then 429.
    let mut statuses = Vec::new();
    for n in 0..7 {
        let response = platform.get(&format!("/v1/search?q={n}")).await;
        statuses.push(response.status().as_u16());
        let headers = response.headers();
        assert_eq!(
            headers["ratelimit-policy"], "\"five\";q=5;w=3600",
            "every answer names the policy (5 per hour, which is also its burst: 5 at once)"
        );
        assert!(headers.contains_key("ratelimit") && headers.contains_key("ratelimit-limit"));
        assert!(headers.contains_key("ratelimit-remaining") && headers.contains_key("ratelimit-reset"));
        if response.status().as_u16() == 429 {
            let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=720).contains(&retry), "one request per 720 s: {retry}");
            assert_eq!(headers["ratelimit-remaining"], "0");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(upstream.hits(), 5, "refused requests never reach the upstream");

    // A client's own policy applies on every route it calls, with its own counter.
    let (_, client_id, secret) = client(&platform, "limited", "acme", &[], Some(tight["id"].as_str().unwrap())).await;
    let issued = bearer(&platform, &client_id, &secret).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = platform
            .http
            .get(format!("{}/v1/private/x", platform.gateway_server.url()))
            .bearer_auth(&issued)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 429]);

    // A policy in use cannot be deleted.
    let admin = conformance::http_client_with_token(&support::token());
    let deleted = admin
        .delete(format!(
            "{}/v1/admin/rate-limit-policies/{}",
            platform.gateway_server.url(),
            policy["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 409);
    let metrics = platform.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("pake_gateway_rate_limit_decisions_total{policy=\"five\",result=\"limited\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_coalesces_misses_serves_hits_and_forgets_what_is_invalidated() {
    let (options, _) = ed25519_options();
    let platform = Platform::start_with(Backend::Sqlite, options).await;
    let upstream = Upstream::start("docs", Behaviour::Slow(Duration::from_millis(300))).await;
    platform.service("docs", "round_robin", &[(upstream.port(), 100)], lenient_breaker()).await;
    platform
        .route(json!({"name": "docs", "path_prefix": "/docs", "methods": ["GET", "POST"], "api_version": "v1",
        "service": "docs", "cache": {"enabled": true, "ttl_seconds": 60, "methods": ["GET"], "tags": ["docs"]}}))
        .await;

    // Twenty concurrent misses for one key: one upstream request, twenty identical answers.
    let url = format!("{}/v1/docs/7?full=1", platform.gateway_server.url());
    let requests = (0..20).map(|_| {
        let (http, url) = (platform.http.clone(), url.clone());
        tokio::spawn(async move {
            let response = http.get(&url).send().await.unwrap();
            let status = response.headers()["x-cache-status"].to_str().unwrap().to_string();
            (response.status().as_u16(), status, response.text().await.unwrap())
        })
    });
    let answers: Vec<(u16, String, String)> =
        futures::future::join_all(requests).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(upstream.hits(), 1, "concurrent misses are coalesced");
    assert!(answers.iter().all(|(status, cache, body)| *status == 200 && cache == "MISS" && *body == answers[0].2));

    // Then hits, with an Age; another query string is another key; no-cache bypasses.
    let hit = platform.http.get(&url).send().await.unwrap();
    assert_eq!(hit.headers()["x-cache-status"], "HIT");
    assert!(hit.headers().contains_key("age"));
    assert_eq!(hit.text().await.unwrap(), answers[0].2);
    let other = platform.get("/v1/docs/7?full=0").await;
    assert_eq!(other.headers()["x-cache-status"], "MISS");
    let bypass = platform.http.get(&url).header("cache-control", "no-cache").send().await.unwrap();
    assert_eq!(bypass.headers()["x-cache-status"], "BYPASS");
    let posted = platform.http.post(&url).body("x").send().await.unwrap();
    assert_eq!(posted.headers()["x-cache-status"], "BYPASS", "POST is not a cached method here");
    assert_eq!(upstream.hits(), 4);

    // Invalidation by exact key, then by tag.
    let invalidated: Value =
        admin_post(&platform, "/v1/admin/cache/invalidations", json!({"keys": ["/v1/docs/7?full=1"]}))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(invalidated["invalidated"], 1);
    assert_eq!(invalidated["propagated_to"], 0, "embedded mode has no other replicas");
    assert_eq!(platform.http.get(&url).send().await.unwrap().headers()["x-cache-status"], "MISS");
    assert_eq!(platform.get("/v1/docs/7?full=0").await.headers()["x-cache-status"], "HIT");
    let invalidated: Value =
        admin_post(&platform, "/v1/admin/cache/invalidations", json!({"tags": ["docs"]})).await.json().await.unwrap();
    assert_eq!(invalidated["invalidated"], 2);
    assert_eq!(platform.get("/v1/docs/7?full=0").await.headers()["x-cache-status"], "MISS");

    // Statistics in the admin API and at /metrics.
    let stats: Value = conformance::http_client_with_token(&token())
        .get(format!("{}/v1/admin/cache/stats", platform.gateway_server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["hits"], 2, "{stats}");
    assert!(stats["misses"].as_u64().unwrap() >= 4, "{stats}");
    assert!(stats.get("l2").is_none(), "no L2 in embedded mode: {stats}");
    assert_eq!(stats["routes"][0]["route_name"], "docs");
    let metrics = platform.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("pake_gateway_cache_requests_total{level=\"l1\",result=\"hit\"} 2"), "{metrics}");
}

/// A request the gateway's own HTTP/1.1 path hands to the general one (here: its service
/// speaks h2c) is rate-limited once, not once per path: three at once, then 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_handed_between_paths_is_limited_once() {
    let platform = Platform::start(Backend::Sqlite).await;
    let upstream = Upstream::start("multiplexed", Behaviour::Ok).await;
    platform.service_over("multiplexed", upstream.port(), "h2c").await;
    let policy: Value = admin_post(
        &platform,
        "/v1/admin/rate-limit-policies",
        json!({"name": "three", "algorithm": "gcra", "rate": 3, "period_seconds": 3600, "burst": 2,
               "scope": "per_tenant_route"}),
    )
    .await
    .json()
    .await
    .unwrap();
    platform
        .route(json!({"name": "mux", "path_prefix": "/mux", "methods": ["GET"], "api_version": "v1",
        "service": "multiplexed", "rate_limit_policy_id": policy["id"]}))
        .await;
    let mut statuses = Vec::new();
    for n in 0..5 {
        statuses.push(platform.get(&format!("/v1/mux/{n}")).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(upstream.hits(), 3);
}

/// The bearer scheme is named without regard to case (RFC 7235 §2.1), on the data plane as
/// on the admin API: both HTTP paths (a plain GET takes the gateway's own, a POST with a
/// body the general one) read the header with the runtime's one parser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_on_the_data_plane_as_on_the_admin_api() {
    let platform = Platform::start(Backend::Sqlite).await;
    let upstream = Upstream::start("members", Behaviour::Ok).await;
    platform.service("members", "round_robin", &[(upstream.port(), 100)], lenient_breaker()).await;
    platform
        .route(json!({"name": "members", "path_prefix": "/members", "methods": ["GET", "POST"], "api_version": "v1",
        "service": "members", "require_token": true}))
        .await;
    let token = token();
    let url = |path: &str| format!("{}{path}", platform.gateway_server.url());
    let accepted = [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER {token}"),
        format!("bEaReR {token}"),
        format!("Bearer    {token}"),
        format!("BEARER  {token}   "),
    ];
    let refused = [
        format!("Basic {token}"),
        format!("Bearer{token}"),
        format!("Bearers {token}"),
        "Bearer".to_string(),
        "Bearer    ".to_string(),
    ];
    let mut expected_hits = 0;
    for (value, status) in accepted.iter().map(|v| (v, 200)).chain(refused.iter().map(|v| (v, 401))) {
        let get = platform.http.get(url("/v1/members/1")).header("authorization", value).send().await.unwrap();
        assert_eq!(get.status().as_u16(), status, "GET with {value:?}");
        let post =
            platform.http.post(url("/v1/members/1")).header("authorization", value).body("{}").send().await.unwrap();
        assert_eq!(post.status().as_u16(), status, "POST with {value:?}");
        // The admin API has always read the scheme so: both sides now agree.
        let admin = platform.http.get(url("/v1/admin/routes")).header("authorization", value).send().await.unwrap();
        assert_eq!(admin.status().as_u16(), status, "admin API with {value:?}");
        if status == 200 {
            expected_hits += 2;
        }
    }
    assert_eq!(upstream.hits(), expected_hits, "no refused request reached the upstream");
}

/// An API client under a guessing attack from many addresses still gets its tokens: what
/// is counted (per client id, and per client id and address) is the attempts that need
/// Argon2, never a secret verified a moment ago, and an address that has proved the secret
/// is not locked out by the others' failures, even with a secret rotated mid-attack. The
/// guessers are slowed: 429 + Retry-After, and no more verified guesses than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guessing_flood_from_many_addresses_is_throttled_and_never_locks_out_the_owner() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    // The default budget: 20 attempts that need Argon2 a second per client id, 40 at once.
    let platform = Platform::start(Backend::Postgres).await;
    let (id, client_id, secret) = client(&platform, "owner", "acme", &["arxiv:read"], None).await;
    let url = format!("{}/v1/auth/token", platform.gateway_server.url());
    let grant = move |secret: &str| json!({"grant_type": "client_credentials", "client_id": client_id.clone(), "client_secret": secret});
    // The owner calls from 127.0.0.1; it has had a grant before the attack starts.
    assert_eq!(issue(&platform, grant(&secret)).await.status().as_u16(), 200);

    // Guessers on 40 other loopback addresses: ~100 wrong secrets a second, until the owner
    // is done (so that the test does not depend on how fast a busy machine answers).
    let guessers: Vec<reqwest::Client> = (10..50u8)
        .map(|n| reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, n])).build().unwrap())
        .collect();
    let (stop, throttled_so_far) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let started = std::time::Instant::now();
    let flood = {
        let (url, grant, stop, throttled_so_far) = (url.clone(), grant.clone(), stop.clone(), throttled_so_far.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let request =
                    guessers[sent.len() % guessers.len()].post(&url).json(&grant(&pake_tokens::random_token(32)));
                let throttled_so_far = throttled_so_far.clone();
                sent.push(tokio::spawn(async move {
                    let response = request.send().await.unwrap();
                    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                    if response.status().as_u16() == 429 {
                        throttled_so_far.fetch_add(1, Ordering::SeqCst);
                    }
                    (response.status().as_u16(), retry_after)
                }));
            }
            futures::future::join_all(sent).await.into_iter().map(Result::unwrap).collect::<Vec<_>>()
        })
    };

    // Once the guessers are being throttled, the owner asks every 100 ms: eight times with
    // its secret, then, rotated (its new secret never verified before), eight more.
    while throttled_so_far.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "the flood was never throttled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut owner = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut current = secret.clone();
    for n in 0..16 {
        if n == 8 {
            let body: Value = admin_post(&platform, &format!("/v1/admin/clients/{id}/rotate-secret"), json!({}))
                .await
                .json()
                .await
                .unwrap();
            current = body["client_secret"].as_str().unwrap().to_string();
        }
        let asked = std::time::Instant::now();
        owner.push(issue(&platform, grant(&current)).await.status().as_u16());
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let flood = flood.await.unwrap();
    let elapsed = started.elapsed();
    let count = |status: u16| flood.iter().filter(|(s, _)| *s == status).count();
    let (verified, throttled) = (count(401), count(429));
    println!(
        "owner: {} of {} requests got 200 (the slowest in {slowest:?}); flood: {} requests in {elapsed:?}, \
         {verified} verified (401), {throttled} throttled (429)",
        owner.iter().filter(|s| **s == 200).count(),
        owner.len(),
        flood.len(),
    );
    assert!(owner.iter().all(|s| *s == 200), "the owner was refused: {owner:?}");
    assert_eq!(verified + throttled, flood.len(), "only 401 and 429 for wrong secrets");
    assert!(
        flood
            .iter()
            .all(|(s, retry)| *s != 429 || retry.as_deref().is_some_and(|r| r.parse::<u64>().is_ok_and(|r| r >= 1)))
    );
    // The budget: 41 at once and 20 a second after, however slowly the machine gets
    // through the flood; a guess over it is refused before it is checked.
    let budget = 41 + (elapsed.as_secs_f64() * 20.0).ceil() as usize;
    assert!(verified <= budget, "{verified} guesses verified, the budget is {budget}");
    assert!(throttled >= flood.len() / 4, "the guessers were hardly throttled: {throttled} of {}", flood.len());

    // Once the flood stops and its budget refills, a guess is a plain 401 again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(issue(&platform, grant(&secret)).await.status().as_u16(), 401, "the old secret");
    assert_eq!(issue(&platform, grant(&current)).await.status().as_u16(), 200);
}
