//! Test support for running services against real dependencies: a fresh PostgreSQL
//! database (UUID-named, dropped afterwards) or SQLite file per test, a key prefix of its
//! own on the shared Redis (keys deleted afterwards), a private `redis-server` to kill and
//! restart, a TCP proxy that can cut a service off from its database, and a
//! deadline-bounded wait for a condition.

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

/// A key prefix on the shared test Redis that no other test uses; every key under it is
/// deleted when the value is dropped.
pub struct RedisPrefix {
    pub prefix: String,
    pub url: String,
}

impl RedisPrefix {
    /// `label:` followed by a UUID, on [`redis_url`].
    pub fn new(label: &str) -> RedisPrefix {
        RedisPrefix::on(&redis_url(), label)
    }

    /// A prefix on another Redis (one that may not even be listening).
    pub fn on(url: &str, label: &str) -> RedisPrefix {
        RedisPrefix { prefix: format!("{label}:{}:", uuid::Uuid::new_v4().simple()), url: url.to_string() }
    }

    /// The keys under the prefix now (none when Redis cannot be reached).
    pub fn keys(&self) -> Vec<String> {
        let Ok(mut connection) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection()) else {
            return Vec::new();
        };
        redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query(&mut connection).unwrap_or_default()
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let keys = self.keys();
        if keys.is_empty() {
            return;
        }
        if let Ok(mut connection) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection()) {
            let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
    }
}

/// A free loopback port (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A `redis-server` of the test's own, on its own port, for tests that kill, pause and
/// restart Redis (the shared one must stay up for everybody else). Killed when dropped.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        PrivateRedis::start_on(free_port())
    }

    pub fn start_on(port: u16) -> PrivateRedis {
        let mut redis = PrivateRedis { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again) on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let started = std::time::Instant::now();
        while !self.answers() {
            assert!(started.elapsed() < Duration::from_secs(5), "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// SIGKILL, no goodbye to the clients; returns once the port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`): a paused server accepts connections but does not
    /// answer.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server is running").id().to_string();
        let status = std::process::Command::new("kill").args([signal, &pid]).status().expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
