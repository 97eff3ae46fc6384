//! An acknowledged write is never lost: the real `pake` process is killed with SIGKILL
//! right after acknowledging a burst of registrations, restarted on the same store, and
//! every acknowledged registration is there. Runs on the embedded SQLite file and on
//! PostgreSQL.

mod support;

use conformance::support::{Backend, TestDatabase};
use std::time::Duration;
use support::Pake;

const SECRET: &str = "durability-test-secret-0123456789abcdef";

/// Starts `pake serve` (registry and gateway) and checks that the gateway answers too.
async fn start_pake(database_url: &str, data_dir: &std::path::Path) -> (Pake, String) {
    let env = [
        ("PAKE_DATABASE_URL", database_url.to_string()),
        ("PAKE_DATA_DIR", data_dir.display().to_string()),
        ("PAKE_TOKEN_SECRET", SECRET.to_string()),
    ];
    let pake = Pake::start(&["registry", "gateway"], &env).await;
    let live = reqwest::get(format!("{}/v1/health/live", pake.url("gateway"))).await.expect("the gateway answers");
    assert_eq!(live.status().as_u16(), 200);
    let registry = pake.url("registry");
    (pake, registry)
}

fn token() -> String {
    pake_tokens::TokenIssuer::hs256(SECRET.as_bytes()).expect("secret").issue(
        "durability",
        None,
        &["mesh:read", "mesh:write"],
        Duration::from_secs(600),
    )
}

async fn acknowledged_writes_survive_kill_9(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let data_dir = std::env::temp_dir().join(format!("pake-durability-{}", uuid::Uuid::new_v4().simple()));
    let http = conformance::http_client_with_token(&token());

    let (pake, registry) = start_pake(&db.url, &data_dir).await;
    let mut acknowledged = Vec::new();
    for n in 0..40 {
        let response = http
            .post(format!("{registry}/api/v1/services/register"))
            .json(&serde_json::json!({"name": format!("durable-{n}"), "version": "1.0.0"}))
            .send()
            .await
            .expect("the registry answers");
        assert_eq!(response.status().as_u16(), 201);
        let body: serde_json::Value = response.json().await.expect("a body");
        acknowledged.push(body["id"].as_str().expect("an id").to_string());
    }
    pake.kill().await;

    let (restarted, registry) = start_pake(&db.url, &data_dir).await;
    for id in &acknowledged {
        let response = http.get(format!("{registry}/api/v1/services/{id}")).send().await.expect("answers");
        assert_eq!(response.status().as_u16(), 200, "acknowledged service {id} was lost");
    }
    restarted.kill().await;
    let _ = std::fs::remove_dir_all(data_dir);
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_on_sqlite() {
    acknowledged_writes_survive_kill_9(Backend::Sqlite).await;
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_on_postgres() {
    acknowledged_writes_survive_kill_9(Backend::Postgres).await;
}
