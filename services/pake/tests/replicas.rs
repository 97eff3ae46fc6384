//! Two real gateway processes sharing one PostgreSQL and one Redis, as two replicas behind a
//! load balancer: the rate limit holds across both combined; an invalidation sent to one
//! evicts on the other; with Redis killed, requests keep flowing under local limits and
//! L1; with Redis back, the shared behaviour returns by itself. The first admin credential
//! comes from configuration and obtains its token through the token endpoint.

mod support;

use axum::extract::Request;
use conformance::TestServer;
use conformance::support::{Backend, PrivateRedis, TestDatabase, eventually};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::Pake;

const ADMIN_ID: &str = "pk_replica_admin";

/// A counting upstream that answers with the path it saw.
async fn upstream(hits: Arc<AtomicUsize>) -> TestServer {
    let router = axum::Router::new().fallback(move |request: Request| {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            json!({"path": request.uri().to_string()}).to_string()
        }
    });
    TestServer::start(router).await.expect("upstream starts")
}

struct Replicas {
    a: Pake,
    b: Pake,
    admin: reqwest::Client,
    http: reqwest::Client,
}

impl Replicas {
    fn gateway(&self, which: char) -> String {
        if which == 'a' { self.a.url("gateway") } else { self.b.url("gateway") }
    }

    async fn get(&self, which: char, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.gateway(which))).send().await.expect("the gateway answers")
    }

    async fn admin_post(&self, which: char, path: &str, body: Value) -> reqwest::Response {
        self.admin.post(format!("{}{path}", self.gateway(which))).json(&body).send().await.expect("answers")
    }

    /// Requests alternating between the replicas; the statuses in order.
    async fn alternate(&self, path: &str, count: usize) -> Vec<u16> {
        let mut statuses = Vec::new();
        for n in 0..count {
            let which = if n % 2 == 0 { 'a' } else { 'b' };
            statuses.push(self.get(which, path).await.status().as_u16());
        }
        statuses
    }
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_limits_and_invalidations_and_survive_losing_redis() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let mut redis = PrivateRedis::start();
    let data_dir = std::env::temp_dir().join(format!("pake-replicas-{}", uuid::Uuid::new_v4().simple()));
    let secret = pake_tokens::random_token(32);
    let env = [
        ("PAKE_DATABASE_URL", db.url.clone()),
        ("PAKE_DATA_DIR", data_dir.display().to_string()),
        ("PAKE_REDIS_URL", redis.url()),
        ("PAKE_REDIS_PREFIX", format!("test-{}:", uuid::Uuid::new_v4().simple())),
        ("PAKE_ADMIN_CLIENT_ID", ADMIN_ID.to_string()),
        ("PAKE_ADMIN_CLIENT_SECRET", secret.clone()),
    ];
    let a = Pake::start(&["registry", "gateway"], &env).await;
    let b = Pake::start(&["gateway"], &env).await;

    // The configured admin client gets its token from the token endpoint of either replica.
    let plain = reqwest::Client::new();
    let grant = json!({"grant_type": "client_credentials", "client_id": ADMIN_ID, "client_secret": secret});
    let issued: Value = plain
        .post(format!("{}/v1/auth/token", b.url("gateway")))
        .json(&grant)
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("a token");
    let token = issued["access_token"].as_str().expect("a token").to_string();
    let registry = a.url("registry");
    let replicas = Replicas { a, b, admin: conformance::http_client_with_token(&token), http: plain };

    // One service, three routes; the probe route is created last, so a replica that serves
    // it has loaded the other two.
    let hits = Arc::new(AtomicUsize::new(0));
    let server = upstream(hits.clone()).await;
    let service: Value = replicas
        .admin
        .post(format!("{registry}/api/v1/services/register"))
        .json(&json!({"name": "papers", "version": "1.0.0"}))
        .send()
        .await
        .expect("registers")
        .json()
        .await
        .expect("a service");
    let instance = replicas
        .admin
        .post(format!("{registry}/api/v1/services/{}/instances", service["id"].as_str().expect("id")))
        .json(&json!({"address": "127.0.0.1", "port": server.addr.port(), "ttl_seconds": 120}))
        .send()
        .await
        .expect("registers");
    assert_eq!(instance.status().as_u16(), 201);
    let policy: Value = replicas
        .admin_post('a', "/v1/admin/rate-limit-policies", json!({"name": "ten-an-hour", "algorithm": "gcra",
            "rate": 10, "period_seconds": 3600, "burst": 9, "scope": "per_tenant_route", "on_redis_unavailable": "local"}))
        .await
        .json()
        .await
        .expect("a policy");
    for route in [
        json!({"name": "limited", "path_prefix": "/limited", "methods": ["GET"], "api_version": "v1", "service": "papers",
               "rate_limit_policy_id": policy["id"]}),
        json!({"name": "cached", "path_prefix": "/cached", "methods": ["GET"], "api_version": "v1", "service": "papers",
               "cache": {"enabled": true, "ttl_seconds": 300}}),
        json!({"name": "probe", "path_prefix": "/probe", "methods": ["GET"], "api_version": "v1", "service": "papers"}),
    ] {
        let created = replicas.admin_post('a', "/v1/admin/routes", route).await;
        assert_eq!(created.status().as_u16(), 201);
    }
    eventually(Duration::from_secs(5), || async { replicas.get('b', "/v1/probe").await.status().as_u16() == 200 })
        .await;

    // 1. The limit holds across both replicas combined: ten of thirty, whichever replica.
    let statuses = replicas.alternate("/v1/limited/x", 30).await;
    assert_eq!((count(&statuses, 200), count(&statuses, 429)), (10, 20), "{statuses:?}");
    // Each of those sequential decisions was its own round trip, counted at /metrics.
    let mut round_trips = 0;
    for which in ['a', 'b'] {
        let metrics = replicas.get(which, "/metrics").await.text().await.unwrap();
        let line = metrics
            .lines()
            .find(|line| line.starts_with("pake_gateway_rate_limit_redis_round_trips_total "))
            .unwrap_or_else(|| panic!("replica {which} reports no Redis round trips:\n{metrics}"));
        round_trips += line.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).expect("a count");
    }
    assert!(round_trips >= 30, "{round_trips} Redis round trips for 30 sequential decisions");

    // 2. The cache is shared (L2), and an invalidation at one replica evicts at the other.
    let before = hits.load(Ordering::SeqCst);
    let first = replicas.get('a', "/v1/cached/doc?id=1").await;
    assert_eq!(first.headers()["x-cache-status"], "MISS");
    assert_eq!(replicas.get('b', "/v1/cached/doc?id=1").await.headers()["x-cache-status"], "HIT", "from L2");
    assert_eq!(replicas.get('b', "/v1/cached/doc?id=1").await.headers()["x-cache-status"], "HIT", "from L1");
    assert_eq!(hits.load(Ordering::SeqCst), before + 1);
    let invalidated: Value = replicas
        .admin_post('a', "/v1/admin/cache/invalidations", json!({"prefixes": ["/v1/cached/"]}))
        .await
        .json()
        .await
        .expect("an invalidation");
    assert_eq!(invalidated["propagated_to"], 1, "{invalidated}");
    assert!(invalidated["invalidated"].as_u64().expect("a count") >= 1, "{invalidated}");
    // B's own L1 copy is gone too: the pub/sub message arrives within milliseconds.
    eventually(Duration::from_secs(1), || async {
        let response = replicas.get('b', "/v1/cached/doc?id=1").await;
        response.headers()["x-cache-status"] == "MISS"
    })
    .await;
    let stats: Value = replicas
        .admin
        .get(format!("{}/v1/admin/cache/stats", replicas.gateway('b')))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("stats");
    assert!(stats["l2"]["hits"].as_u64().expect("l2 hits") >= 1, "{stats}");
    assert!(stats["l1"]["hits"].as_u64().expect("l1 hits") >= 1, "{stats}");

    // 3. Redis dies. Requests keep flowing, promptly: the cache from L1, the limit locally
    //    (each replica enforces the policy by itself, so a fresh quota of ten per replica).
    replicas.get('a', "/v1/cached/doc?id=1").await; // warm A's L1 as well
    redis.kill();
    let started = Instant::now();
    let cached = replicas.get('b', "/v1/cached/doc?id=1").await;
    assert_eq!(cached.status().as_u16(), 200);
    assert_eq!(cached.headers()["x-cache-status"], "HIT", "L1 still answers");
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let asked = Instant::now();
        statuses.push(replicas.get('a', "/v1/limited/x").await.status().as_u16());
        assert!(asked.elapsed() < Duration::from_millis(500), "a decision without Redis took {:?}", asked.elapsed());
    }
    assert_eq!((count(&statuses, 200), count(&statuses, 429)), (10, 2), "local limits: {statuses:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let refused = replicas.admin_post('a', "/v1/admin/cache/invalidations", json!({"tags": ["any"]})).await;
    assert_eq!(refused.status().as_u16(), 503, "an invalidation that cannot reach every replica says so");
    assert!(refused.headers().contains_key("retry-after"));

    // 4. Redis comes back (empty): propagation and the shared limit return by themselves.
    redis.restart();
    eventually(Duration::from_secs(10), || async {
        let response =
            replicas.admin_post('a', "/v1/admin/cache/invalidations", json!({"prefixes": ["/v1/cached/"]})).await;
        response.status().as_u16() == 200 && response.json::<Value>().await.is_ok_and(|body| body["propagated_to"] == 1)
    })
    .await;
    assert_eq!(replicas.get('b', "/v1/cached/doc?id=1").await.headers()["x-cache-status"], "MISS");
    // Decisions are Redis's again at once (a connection broken by the restart is replaced
    // on first use, not after a back-off): a fresh quota, shared by both replicas.
    let statuses = replicas.alternate("/v1/limited/x", 30).await;
    assert_eq!((count(&statuses, 200), count(&statuses, 429)), (10, 20), "{statuses:?}");

    replicas.a.kill().await;
    replicas.b.kill().await;
    let _ = std::fs::remove_dir_all(data_dir);
}
