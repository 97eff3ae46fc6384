//! The admin API's lists and statistics: every item of a filter's result is listed, a
//! limit cuts a page with a cursor to the rest, and the last page has none; a route's cache
//! hit rate counts its hits and misses.

mod support;

use conformance::http_client_with_token;
use conformance::support::Backend;
use serde_json::{Value, json};
use support::*;

/// Follows `next_cursor` from `first` (a path with its query) and returns each page's items.
async fn pages(platform: &Platform, first: &str) -> Vec<Vec<Value>> {
    let http = http_client_with_token(&token());
    let base = platform.gateway_server.url();
    let mut pages = Vec::new();
    let mut url = reqwest::Url::parse(&format!("{base}{first}")).unwrap();
    loop {
        let answer = http.get(url.clone()).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 200, "{url}");
        let body: Value = answer.json().await.unwrap();
        pages.push(body["items"].as_array().unwrap().clone());
        match body["next_cursor"].as_str() {
            Some(cursor) => {
                url = reqwest::Url::parse(&format!("{base}{first}")).unwrap();
                url.query_pairs_mut().append_pair("cursor", cursor);
            }
            None => break,
        }
        assert!(pages.len() < 10, "the cursors do not end: {pages:?}");
    }
    pages
}

fn field(items: &[Value], name: &str) -> Vec<String> {
    items.iter().map(|item| item[name].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breakers_are_all_listed_and_paged() {
    let platform = Platform::start(Backend::Sqlite).await;
    let upstreams = [
        Upstream::start("trio", Behaviour::Ok).await,
        Upstream::start("trio", Behaviour::Ok).await,
        Upstream::start("trio", Behaviour::Ok).await,
    ];
    let ports: Vec<(u16, u64)> = upstreams.iter().map(|u| (u.port(), 100)).collect();
    let (_, instances) = platform.service("trio", "round_robin", &ports, lenient_breaker()).await;
    platform
        .route(
            json!({"name": "trio", "path_prefix": "/trio", "methods": ["GET"], "api_version": "v1", "service": "trio"}),
        )
        .await;
    // Round robin: every instance is tried, so each has a breaker.
    for _ in 0..6 {
        assert_eq!(platform.get("/v1/trio").await.status().as_u16(), 200);
    }
    assert!(upstreams.iter().all(|u| u.hits() > 0), "every instance was tried");
    let mut expected: Vec<String> = instances.iter().map(|id| format!("trio.{id}")).collect();
    expected.sort();

    let all = pages(&platform, "/v1/admin/circuit-breakers?service=trio").await;
    assert_eq!(all.len(), 1, "three breakers fit the default page: {all:?}");
    assert_eq!(field(&all[0], "upstream_id"), expected);

    let paged = pages(&platform, "/v1/admin/circuit-breakers?service=trio&limit=2").await;
    assert_eq!(paged.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1], "{paged:?}");
    assert_eq!(field(&paged.concat(), "upstream_id"), expected);

    let closed = pages(&platform, "/v1/admin/circuit-breakers?service=trio&state=closed&limit=3").await;
    assert_eq!(closed.len(), 1, "a full last page has no cursor: {closed:?}");
    assert_eq!(field(&closed[0], "upstream_id"), expected);
    let open = pages(&platform, "/v1/admin/circuit-breakers?service=trio&state=open").await;
    assert_eq!(open, vec![Vec::<Value>::new()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_paged_by_name_and_filtered() {
    let platform = Platform::start(Backend::Sqlite).await;
    platform.service("paged", "round_robin", &[], lenient_breaker()).await;
    for (name, prefix, version) in [("r-a", "/alpha", "v1"), ("r-b", "/beta", "v1"), ("r-c", "/alpha/x", "v2")] {
        platform
            .route(json!({"name": name, "path_prefix": prefix, "methods": ["GET"], "api_version": version, "service": "paged"}))
            .await;
    }
    let one_each = pages(&platform, "/v1/admin/routes?service=paged&limit=1").await;
    assert_eq!(
        one_each.iter().map(|p| field(p, "name")).collect::<Vec<_>>(),
        vec![vec!["r-a"], vec!["r-b"], vec!["r-c"]]
    );
    let two = pages(&platform, "/v1/admin/routes?service=paged&limit=2").await;
    assert_eq!(two.iter().map(|p| field(p, "name")).collect::<Vec<_>>(), vec![vec!["r-a", "r-b"], vec!["r-c"]]);
    let whole = pages(&platform, "/v1/admin/routes?service=paged&limit=3").await;
    assert_eq!(whole.iter().map(|p| field(p, "name")).collect::<Vec<_>>(), vec![vec!["r-a", "r-b", "r-c"]]);
    let alpha = pages(&platform, "/v1/admin/routes?service=paged&path_prefix=/alpha").await;
    assert_eq!(field(&alpha.concat(), "name"), vec!["r-a", "r-c"]);
    let v2 = pages(&platform, "/v1/admin/routes?service=paged&api_version=v2").await;
    assert_eq!(field(&v2.concat(), "name"), vec!["r-c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_clients_are_paged_by_tenant_and_name_and_filtered() {
    let platform = Platform::start(Backend::Sqlite).await;
    let http = http_client_with_token(&token());
    let url = format!("{}/v1/admin/clients", platform.gateway_server.url());
    for (tenant, name, disabled) in [("acme", "b", false), ("acme", "a", true), ("zeta", "a", false)] {
        let created = http
            .post(&url)
            .json(&json!({"name": name, "tenant": tenant, "scopes": ["demo:read"], "disabled": disabled}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status().as_u16(), 201, "{}", created.text().await.unwrap());
    }
    let key = |items: &[Value]| -> Vec<String> {
        items.iter().map(|c| format!("{}/{}", c["tenant"].as_str().unwrap(), c["name"].as_str().unwrap())).collect()
    };
    let one_each = pages(&platform, "/v1/admin/clients?limit=1").await;
    assert_eq!(
        one_each.iter().map(|p| key(p)).collect::<Vec<_>>(),
        vec![vec!["acme/a"], vec!["acme/b"], vec!["zeta/a"]]
    );
    let acme = pages(&platform, "/v1/admin/clients?tenant=acme").await;
    assert_eq!(key(&acme.concat()), vec!["acme/a", "acme/b"]);
    let zeta = pages(&platform, "/v1/admin/clients?tenant=zeta").await;
    assert_eq!(key(&zeta.concat()), vec!["zeta/a"]);
    let enabled = pages(&platform, "/v1/admin/clients?disabled=false").await;
    assert_eq!(key(&enabled.concat()), vec!["acme/b", "zeta/a"]);
    let disabled = pages(&platform, "/v1/admin/clients?disabled=true").await;
    assert_eq!(key(&disabled.concat()), vec!["acme/a"]);
}

/// A renamed route keeps its cached answers (the cache key does not name the route) and
/// counts under its new name: hits and no misses is a hit rate of 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_only_hits_has_a_hit_rate_of_one() {
    let platform = Platform::start(Backend::Sqlite).await;
    let upstream = Upstream::start("cached", Behaviour::Ok).await;
    platform.service("cached", "round_robin", &[(upstream.port(), 100)], lenient_breaker()).await;
    let spec = |name: &str| {
        json!({"name": name, "path_prefix": "/cached", "methods": ["GET"], "api_version": "v1", "service": "cached",
               "cache": {"enabled": true, "ttl_seconds": 60, "methods": ["GET"]}})
    };
    let id = platform.route(spec("first")).await;
    assert_eq!(platform.get("/v1/cached/1").await.headers()["x-cache-status"], "MISS");
    let http = http_client_with_token(&token());
    let base = platform.gateway_server.url();
    let renamed = http.put(format!("{base}/v1/admin/routes/{id}")).json(&spec("second")).send().await.unwrap();
    assert_eq!(renamed.status().as_u16(), 200, "{}", renamed.text().await.unwrap());
    let stats_url = format!("{base}/v1/admin/cache/stats");
    let stats = || async { http.get(&stats_url).send().await.unwrap().json::<Value>().await.unwrap() };
    // The gateway serves the renamed route once its stats name it.
    for _ in 0..100 {
        if stats().await["routes"].as_array().unwrap().iter().any(|r| r["route_name"] == "second") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for _ in 0..2 {
        assert_eq!(platform.get("/v1/cached/1").await.headers()["x-cache-status"], "HIT");
    }
    assert_eq!(upstream.hits(), 1);
    let stats = stats().await;
    let second = stats["routes"].as_array().unwrap().iter().find(|r| r["route_name"] == "second").expect("listed");
    assert_eq!(
        (&second["hits"], &second["misses"], &second["hit_rate"]),
        (&json!(2), &json!(0), &json!(1.0)),
        "{stats}"
    );
}

/// Rate-limit policies page by name like the other lists; a policy a route or an API client
/// uses is kept (409 naming it), one nothing uses goes, whatever others use; the health
/// answer counts the routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_policies_are_paged_and_only_unused_ones_deleted() {
    let platform = Platform::start(Backend::Sqlite).await;
    let http = http_client_with_token(&token());
    let base = platform.gateway_server.url();
    let mut ids = std::collections::HashMap::new();
    for name in ["p-c", "p-a", "p-b"] {
        let created = http
            .post(format!("{base}/v1/admin/rate-limit-policies"))
            .json(&json!({"name": name, "algorithm": "gcra", "rate": 100, "period_seconds": 60, "scope": "per_client"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status().as_u16(), 201);
        ids.insert(name, created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    let one_each = pages(&platform, "/v1/admin/rate-limit-policies?limit=1").await;
    assert_eq!(
        one_each.iter().map(|p| field(p, "name")).collect::<Vec<_>>(),
        vec![vec!["p-a"], vec!["p-b"], vec!["p-c"]]
    );
    let two = pages(&platform, "/v1/admin/rate-limit-policies?limit=2").await;
    assert_eq!(two.iter().map(|p| field(p, "name")).collect::<Vec<_>>(), vec![vec!["p-a", "p-b"], vec!["p-c"]]);

    platform.service("limited", "round_robin", &[], lenient_breaker()).await;
    let route = |name: &str, prefix: &str, policy: Option<&str>| {
        let mut spec = json!({"name": name, "path_prefix": prefix, "methods": ["GET"], "api_version": "v1",
                              "service": "limited"});
        if let Some(policy) = policy {
            spec["rate_limit_policy_id"] = json!(ids[policy]);
        }
        spec
    };
    platform.route(route("uses-b", "/b", Some("p-b"))).await;
    platform.route(route("plain", "/plain", None)).await;
    for (name, policy) in [("uses-c", Some("p-c")), ("plain", None)] {
        let mut spec = json!({"name": name, "tenant": "acme", "scopes": ["limited:read"]});
        if let Some(policy) = policy {
            spec["rate_limit_policy_id"] = json!(ids[policy]);
        }
        let created = http.post(format!("{base}/v1/admin/clients")).json(&spec).send().await.unwrap();
        assert_eq!(created.status().as_u16(), 201);
    }
    let delete = |name: &str| http.delete(format!("{base}/v1/admin/rate-limit-policies/{}", ids[name])).send();
    let kept = delete("p-b").await.unwrap();
    assert_eq!(kept.status().as_u16(), 409);
    let body: Value = kept.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("uses-b"), "{body}");
    let kept = delete("p-c").await.unwrap();
    assert_eq!(kept.status().as_u16(), 409);
    let body: Value = kept.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("acme/uses-c"), "{body}");
    assert_eq!(delete("p-a").await.unwrap().status().as_u16(), 204, "no route or client uses p-a");
    let names = pages(&platform, "/v1/admin/rate-limit-policies").await;
    assert_eq!(field(&names.concat(), "name"), vec!["p-b", "p-c"]);

    let health: Value = http.get(format!("{base}/v1/health")).send().await.unwrap().json().await.unwrap();
    let output = health["checks"]["registry"]["output"].as_str().unwrap_or_default();
    assert!(output.ends_with(", 2 routes"), "{health}");
}

/// `require_token: false` opens a route to anonymous callers, unless it names scopes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_opt_out_of_tokens_unless_it_names_scopes() {
    let platform = Platform::start(Backend::Sqlite).await;
    platform.service("open", "round_robin", &[], lenient_breaker()).await;
    let http = http_client_with_token(&token());
    let url = format!("{}/v1/admin/routes", platform.gateway_server.url());
    let spec = |name: &str, scopes: Value| {
        json!({"name": name, "path_prefix": format!("/{name}"), "methods": ["GET"], "api_version": "v1",
               "service": "open", "require_token": false, "required_scopes": scopes})
    };
    let open = http.post(&url).json(&spec("anonymous", json!([]))).send().await.unwrap();
    assert_eq!(open.status().as_u16(), 201, "{}", open.text().await.unwrap());
    let open: Value = open.json().await.unwrap_or_default();
    assert_ne!(open["require_token"], json!(true));
    let scoped = http.post(&url).json(&spec("scoped", json!(["open:read"]))).send().await.unwrap();
    assert_eq!(scoped.status().as_u16(), 422);
}

/// A route or an API client naming a rate-limit policy that does not exist is refused
/// (422 naming the field), when created and when replaced; deleting a policy that is not
/// there is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_rate_limit_policy_is_refused_by_name() {
    let platform = Platform::start(Backend::Sqlite).await;
    platform.service("limited", "round_robin", &[], lenient_breaker()).await;
    let http = http_client_with_token(&token());
    let base = platform.gateway_server.url();
    let missing = uuid::Uuid::new_v4();
    let route =
        json!({"name": "r", "path_prefix": "/r", "methods": ["GET"], "api_version": "v1", "service": "limited"});
    let client = json!({"name": "c", "tenant": "acme", "scopes": ["limited:read"]});
    let refused = |answer: reqwest::Response| async move {
        assert_eq!(answer.status().as_u16(), 422);
        let body: Value = answer.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("rate_limit_policy_id"), "{body}");
    };
    let with_missing = |mut spec: Value| {
        spec["rate_limit_policy_id"] = json!(missing);
        spec
    };
    refused(http.post(format!("{base}/v1/admin/routes")).json(&with_missing(route.clone())).send().await.unwrap())
        .await;
    refused(http.post(format!("{base}/v1/admin/clients")).json(&with_missing(client.clone())).send().await.unwrap())
        .await;
    let route_id = platform.route(route.clone()).await;
    let created: Value =
        http.post(format!("{base}/v1/admin/clients")).json(&client).send().await.unwrap().json().await.unwrap();
    let replaced = http.put(format!("{base}/v1/admin/routes/{route_id}")).json(&with_missing(route)).send().await;
    refused(replaced.unwrap()).await;
    let client_path = format!("{base}/v1/admin/clients/{}", created["id"].as_str().unwrap());
    let updated = http.patch(client_path).json(&json!({"rate_limit_policy_id": missing})).send().await;
    refused(updated.unwrap()).await;
    // Deleting what is not there is a 404, a second delete too.
    let policy: Value = http
        .post(format!("{base}/v1/admin/rate-limit-policies"))
        .json(&json!({"name": "once", "algorithm": "gcra", "rate": 1, "period_seconds": 1, "scope": "per_client"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let policies = format!("{base}/v1/admin/rate-limit-policies");
    let delete = |id: String| http.delete(format!("{policies}/{id}")).send();
    let once = policy["id"].as_str().unwrap().to_string();
    assert_eq!(delete(once.clone()).await.unwrap().status().as_u16(), 204);
    assert_eq!(delete(once).await.unwrap().status().as_u16(), 404);
    assert_eq!(delete(missing.to_string()).await.unwrap().status().as_u16(), 404);
}
