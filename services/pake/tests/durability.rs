//! An acknowledged write is never lost: the real `pake` process is killed with SIGKILL
//! right after acknowledging a burst of registrations, restarted on the same store, and
//! every acknowledged registration is there. Runs on the embedded SQLite file and on
//! PostgreSQL.

use conformance::support::{Backend, TestDatabase};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SECRET: &str = "durability-test-secret-0123456789abcdef";

/// Starts `pake serve` (registry and gateway) on ephemeral ports and waits for it to say
/// where the registry listens; checks that the gateway answers too.
async fn start_pake(database_url: &str, data_dir: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pake"))
        .arg("serve")
        .env("PAKE_GATEWAY_ADDR", "127.0.0.1:0")
        .env("PAKE_DATABASE_URL", database_url)
        .env("PAKE_DATA_DIR", data_dir)
        .env("PAKE_TOKEN_SECRET", SECRET)
        .env("PAKE_REGISTRY_ADDR", "127.0.0.1:0")
        .env("PAKE_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("pake starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (registry, gateway) = tokio::time::timeout(Duration::from_secs(30), async {
        let (mut registry, mut gateway) = (None, None);
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let (Some(addr), Some(message)) = (event["addr"].as_str(), event["message"].as_str()) else { continue };
            let addr = addr.parse::<SocketAddr>().expect("an address");
            if message.starts_with("registry listening") {
                registry = Some(addr);
            } else if message.starts_with("gateway listening") {
                gateway = Some(addr);
            }
            if let (Some(registry), Some(gateway)) = (registry, gateway) {
                return (registry, gateway);
            }
        }
        panic!("pake exited before listening");
    })
    .await
    .expect("pake listens within 30 s");
    let live = reqwest::get(format!("http://{gateway}/v1/health/live")).await.expect("the gateway answers");
    assert_eq!(live.status().as_u16(), 200);
    let addr = registry;
    // Keep draining its output so the pipe never fills.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
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

    let (mut child, addr) = start_pake(&db.url, &data_dir).await;
    let mut acknowledged = Vec::new();
    for n in 0..40 {
        let response = http
            .post(format!("http://{addr}/api/v1/services/register"))
            .json(&serde_json::json!({"name": format!("durable-{n}"), "version": "1.0.0"}))
            .send()
            .await
            .expect("the registry answers");
        assert_eq!(response.status().as_u16(), 201);
        let body: serde_json::Value = response.json().await.expect("a body");
        acknowledged.push(body["id"].as_str().expect("an id").to_string());
    }
    // SIGKILL: no shutdown hook, no flush, nothing graceful.
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");

    let (mut restarted, addr) = start_pake(&db.url, &data_dir).await;
    for id in &acknowledged {
        let response = http.get(format!("http://{addr}/api/v1/services/{id}")).send().await.expect("answers");
        assert_eq!(response.status().as_u16(), 200, "acknowledged service {id} was lost");
    }
    restarted.start_kill().expect("stop");
    restarted.wait().await.expect("reaped");
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
