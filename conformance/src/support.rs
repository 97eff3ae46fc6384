//! Test support for running services against real dependencies: a fresh PostgreSQL
//! database (UUID-named, dropped afterwards) or SQLite file per test, a TCP proxy that can
//! cut a service off from its database, and a deadline-bounded wait for a condition.

use sqlx::Connection;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The server every test database is created on.
pub fn postgres_admin_url() -> String {
    std::env::var("PAKE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The Redis tests share (each under a key prefix of its own).
pub fn redis_url() -> String {
    std::env::var("PAKE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// Deletes every key under `prefix` in the test Redis: what a test leaves behind.
pub async fn delete_redis_keys(prefix: &str) {
    let client = redis::Client::open(redis_url()).expect("a valid Redis URL");
    let mut connection = client.get_multiplexed_async_connection().await.expect("Redis is reachable");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", prefix.replace(['*', '?', '[', ']', '\\'], "")))
        .query_async(&mut connection)
        .await
        .expect("KEYS answers");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut connection).await.expect("DEL answers");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database that exists for one test: a UUID-named PostgreSQL database, or a SQLite file
/// in a temporary directory. Dropped (with `WITH (FORCE)`) when the value is dropped.
pub struct TestDatabase {
    pub url: String,
    name: Option<String>,
    dir: Option<std::path::PathBuf>,
}

impl TestDatabase {
    pub async fn new(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Postgres => {
                let name = format!("pake_test_{}", uuid::Uuid::new_v4().simple());
                let admin = postgres_admin_url();
                let mut connection = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL is reachable");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut connection)
                    .await
                    .expect("create the test database");
                let base = admin.rsplit_once('/').map(|(base, _)| base.to_string()).unwrap_or(admin);
                TestDatabase { url: format!("{base}/{name}"), name: Some(name), dir: None }
            }
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("pake-test-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir).expect("temp dir");
                TestDatabase {
                    url: format!("sqlite://{}", dir.join("registry.db").display()),
                    name: None,
                    dir: Some(dir),
                }
            }
        }
    }

    /// The same database reached through `proxy` (PostgreSQL only).
    pub fn url_via(&self, proxy: SocketAddr) -> String {
        let name = self.name.as_deref().expect("a PostgreSQL test database");
        format!("postgres://postgres@{proxy}/{name}")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            // Drop runs outside any runtime guarantee, so use a thread with its own.
            let admin = postgres_admin_url();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async move {
                    if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
                        let _ =
                            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                                .execute(&mut connection)
                                .await;
                    }
                });
            })
            .join();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Polls `check` until it holds or `deadline` passes; returns how long it took.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < deadline, "condition did not hold within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy in front of PostgreSQL that a test can cut (closing every connection and
/// refusing new ones) and restore, to see how the registry behaves when its database goes
/// away and comes back.
pub struct FaultyProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    severed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyProxy {
    pub async fn start(upstream: SocketAddr) -> FaultyProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let severed = Arc::new(Notify::new());
        let (cut_flag, severed_signal) = (cut.clone(), severed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if cut_flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let severed = severed_signal.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = severed.notified() => {}
                    }
                });
            }
        });
        FaultyProxy { addr, cut, severed, task }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.severed.notify_waiters();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
