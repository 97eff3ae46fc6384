//! JSON numbers as clients write them, over real HTTP: the contract's `integer` is JSON
//! Schema's, which counts `8080.0` and `3e1` as integers (Python's `json` writes whole
//! floats that way), so the registry must accept every such notation in bodies and
//! parameters, store the integer, and still refuse fractions with 422 naming the field.

mod support;

use serde_json::Value;
use support::*;

/// Sends `body` (raw JSON text, so the notation is exactly as written) to `url`.
async fn post(http: &reqwest::Client, url: &str, body: &str) -> (u16, Value) {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the registry answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_numbers_written_as_floats_are_integers() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let registry = TestRegistry::start(&db.url).await;
    let http = registry.http();
    let base = registry.url();

    let (status, service) =
        post(&http, &format!("{base}/api/v1/services/register"), r#"{"name": "numbers", "version": "1.0.0"}"#).await;
    assert_eq!(status, 201, "{service}");
    let instances = format!("{base}/api/v1/services/{}/instances", service["id"].as_str().expect("an id"));

    let (status, created) = post(
        &http,
        &instances,
        r#"{"address": "127.0.0.1", "port": 8080.0, "ttl_seconds": 3e1, "weight": 2.5e2,
            "deregister_critical_after_seconds": 6000e-1}"#,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["port"], 8080, "{created}");
    assert!(created["port"].is_u64(), "answered in integer form: {created}");
    assert_eq!(created["ttl_seconds"], 30, "{created}");
    assert_eq!(created["weight"], 250, "{created}");
    assert_eq!(created["deregister_critical_after_seconds"], 600, "{created}");

    // Read back, it is the integer that was stored.
    let url = format!("{instances}/{}", created["id"].as_str().expect("an id"));
    let read: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!((read["port"].as_u64(), read["ttl_seconds"].as_u64()), (Some(8080), Some(30)), "{read}");

    // Integer query parameters take the same notations.
    for limit in ["1.0", "1e0", "10e-1"] {
        let response = http.get(format!("{instances}?limit={limit}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "limit={limit}");
        let page: Value = response.json().await.unwrap();
        assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "limit={limit}: {page}");
    }
    let response = http.get(format!("{instances}?limit=1.5")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["details"][0]["field"], "limit", "{error}");

    // Fractions, and whole floats out of range, are refused naming the field.
    for (body, field) in [
        (r#"{"address": "127.0.0.1", "port": 8080.5}"#, "/port"),
        (r#"{"address": "127.0.0.1", "port": 80805e-1}"#, "/port"),
        (r#"{"address": "127.0.0.1", "port": 65536.0}"#, "/port"),
        (r#"{"address": "127.0.0.1", "port": 8081, "ttl_seconds": 0.5}"#, "/ttl_seconds"),
    ] {
        let (status, error) = post(&http, &instances, body).await;
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(error["code"], "validation_failed", "{body}: {error}");
        assert_eq!(error["details"][0]["field"], field, "{body}: {error}");
    }
    let listed: Value = http.get(&instances).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "nothing else was stored: {listed}");
}
