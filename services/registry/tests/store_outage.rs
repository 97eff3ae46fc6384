//! The registry when its store goes away: the breaker that makes writes fail fast while
//! PostgreSQL is down and closes when it is back, the write whose commit was cut off
//! (`outcome_unknown`), and registerService's `Idempotency-Key`, which makes retrying such
//! a write safe.

mod support;

use conformance::http_client_with_token;
use conformance::support::eventually;
use pake_tokens::TokenIssuer;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

const POSTGRES: &str = "127.0.0.1:5432";

/// POSTs a registration, with an idempotency key when given; answers status, body and
/// `Retry-After`.
async fn register(http: &reqwest::Client, base: &str, body: &Value, key: Option<&str>) -> (u16, Value, Option<String>) {
    let mut request = http.post(format!("{base}/api/v1/services/register")).json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("the registry answers");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, response.json().await.expect("a JSON body"), retry_after)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// How PostgreSQL is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// Stopped: connections are refused (what `pg_ctl stop` gives).
    Refused,
    /// Unreachable: connections are accepted and never answered (a partition, a hung
    /// host).
    Silent,
}

/// A TCP proxy in front of PostgreSQL that can take it away either way: every open
/// connection is cut, and new ones are refused (the port is closed) or left hanging.
struct OutageProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    silent: Arc<AtomicBool>,
    severed: Arc<Notify>,
    accepting: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn listen_reusably(addr: SocketAddr) -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(128).unwrap()
}

impl OutageProxy {
    async fn start(upstream: SocketAddr) -> OutageProxy {
        let listener = listen_reusably("127.0.0.1:0".parse().unwrap());
        let proxy = OutageProxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            silent: Arc::new(AtomicBool::new(false)),
            severed: Arc::new(Notify::new()),
            accepting: std::sync::Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, silent, severed) = (self.upstream, self.silent.clone(), self.severed.clone());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if silent.load(Ordering::SeqCst) {
                    held.push(inbound);
                    continue;
                }
                let severed = severed.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = severed.notified() => {}
                    }
                });
            }
        });
        *self.accepting.lock().unwrap() = Some(task);
    }

    fn cut(&self, outage: Outage) {
        match outage {
            Outage::Refused => {
                if let Some(task) = self.accepting.lock().unwrap().take() {
                    task.abort();
                }
            }
            Outage::Silent => self.silent.store(true, Ordering::SeqCst),
        }
        self.severed.notify_waiters();
    }

    async fn restore(&self) {
        self.silent.store(false, Ordering::SeqCst);
        if self.accepting.lock().unwrap().is_some() {
            return;
        }
        // Give the aborted task the moment it needs to drop the listener.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.serve(listen_reusably(self.addr));
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        if let Some(task) = self.accepting.lock().unwrap().take() {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_fast_while_postgres_refuses_connections_and_recover_after() {
    writes_fail_fast_during_an_outage_and_recover_after(Outage::Refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_fast_while_postgres_does_not_answer_and_recover_after() {
    writes_fail_fast_during_an_outage_and_recover_after(Outage::Silent).await;
}

/// PostgreSQL goes away: once the store is known to be down, writes answer 503 naming the
/// store at once instead of each waiting 2 s for the pool, readiness says so at once too,
/// reads from the snapshot keep working, and the breaker closes by itself when the
/// database is back.
async fn writes_fail_fast_during_an_outage_and_recover_after(outage: Outage) {
    let db = TestDatabase::new(Backend::Postgres).await;
    let proxy = OutageProxy::start(POSTGRES.parse().unwrap()).await;
    let registry = TestRegistry::start(&db.url_via(proxy.addr)).await;
    let (http, base) = (registry.http(), registry.url());
    let (status, _, _) = register(&http, &base, &json!({"name": "before", "version": "1.0.0"}), None).await;
    assert_eq!(status, 201);

    proxy.cut(outage);
    // Until the store is known to be down, a write may wait for the pool (2 s).
    let started = Instant::now();
    let mut first = Vec::new();
    while !registry.registry.breaker().is_open() {
        assert!(started.elapsed() < Duration::from_secs(5), "the breaker did not open");
        let body = json!({"name": "first", "version": "1.0.0"});
        let (status, error, _) = register(&http, &base, &body, None).await;
        assert_eq!(status, 503, "{error}");
        first.push(started.elapsed());
    }
    let opened = started.elapsed();

    // Every write after that answers at once.
    let mut took = Vec::new();
    for attempt in 0..50 {
        let body = json!({"name": format!("during-{attempt}"), "version": "1.0.0"});
        let started = Instant::now();
        let (status, error, retry_after) = register(&http, &base, &body, None).await;
        took.push(started.elapsed());
        assert_eq!(status, 503, "{error}");
        assert_eq!(error["code"], "unavailable", "{error}");
        assert!(error["message"].as_str().unwrap().contains("store is unavailable"), "{error}");
        assert_eq!(retry_after.as_deref(), Some("2"));
    }
    took.sort();
    let (p50, p99, max) = (percentile(&took, 0.5), percentile(&took, 0.99), took[took.len() - 1]);
    eprintln!(
        "outage ({outage:?}): the breaker opened {opened:?} after the cut (writes before it answered at {first:?}); \
         the next 50 writes answered 503 in p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert!(max < Duration::from_millis(100), "writes during a known outage took up to {max:?}");
    // Other writes fail fast too, and readiness answers at once.
    let started = Instant::now();
    let response =
        http.put(format!("{base}/api/v1/config/before/dev/limit")).json(&json!({"value": "1"})).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let ready = reqwest::get(format!("{base}/health/ready")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(started.elapsed() < Duration::from_millis(200), "config write and readiness took {:?}", started.elapsed());
    // Reads from the snapshot keep working.
    let listed = http.get(format!("{base}/api/v1/services")).send().await.unwrap();
    assert_eq!(listed.status().as_u16(), 200);

    proxy.restore().await;
    let recovered = eventually(Duration::from_secs(10), || async {
        register(&http, &base, &json!({"name": "after", "version": "1.0.0"}), None).await.0 == 201
    })
    .await;
    eprintln!("outage ({outage:?}): writes succeeded again {recovered:?} after the database came back");
    assert!(recovered < Duration::from_secs(5));
    assert!(!registry.registry.breaker().is_open());
    assert_eq!(reqwest::get(format!("{base}/health/ready")).await.unwrap().status().as_u16(), 200);
    let listed: Value = http.get(format!("{base}/api/v1/services")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = listed["items"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["after", "before"], "nothing written during the outage");
}

/// A TCP proxy in front of PostgreSQL that, once armed, lets the `COMMIT` of the next
/// transaction that inserted a service through to the server, then cuts every connection
/// before the server's answer comes back and refuses new ones until restored: the write
/// is committed, and the registry cannot know.
struct CommitCutter {
    addr: SocketAddr,
    state: Arc<CutterState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct CutterState {
    armed: AtomicBool,
    down: AtomicBool,
    severed: Notify,
}

impl CommitCutter {
    async fn start(upstream: SocketAddr) -> CommitCutter {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(CutterState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                if shared.down.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(upstream).await else { continue };
                tokio::spawn(relay(inbound, outbound, shared.clone()));
            }
        });
        CommitCutter { addr, state, task }
    }

    fn arm(&self) {
        self.state.armed.store(true, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.state.armed.store(false, Ordering::SeqCst);
        self.state.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for CommitCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

async fn relay(inbound: TcpStream, outbound: TcpStream, state: Arc<CutterState>) {
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let to_client = {
        let state = state.clone();
        async move {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let Ok(read) = server_read.read(&mut buffer).await else { return };
                // Once cut, the server's answers (to the COMMIT above all) are dropped.
                if read == 0 || state.down.load(Ordering::SeqCst) {
                    return;
                }
                if client_write.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
            }
        }
    };
    let to_server = {
        let state = state.clone();
        async move {
            let mut buffer = vec![0u8; 16 * 1024];
            let mut inserted_service = false;
            loop {
                let Ok(read) = client_read.read(&mut buffer).await else { return };
                if read == 0 {
                    return;
                }
                let chunk = &buffer[..read];
                if state.armed.load(Ordering::SeqCst) {
                    inserted_service |= contains(chunk, b"INSERT INTO services");
                    if inserted_service && contains(chunk, b"COMMIT") {
                        state.down.store(true, Ordering::SeqCst);
                        state.armed.store(false, Ordering::SeqCst);
                        let _ = server_write.write_all(chunk).await;
                        // Give the server the moment it needs to commit, then cut everything.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        state.severed.notify_waiters();
                        return;
                    }
                }
                if server_write.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = to_client => {}
        () = to_server => {}
        () = state.severed.notified() => {}
    }
}

/// PostgreSQL goes away while a registration commits: the registry answers 503
/// `outcome_unknown` (not 500), the registration was in fact committed, and its retry with
/// the same `Idempotency-Key` once the store is back answers 201 with the same service,
/// where a retry without the key would meet 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_while_committing_is_outcome_unknown_and_its_keyed_retry_replays() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let cutter = CommitCutter::start(POSTGRES.parse().unwrap()).await;
    let registry = TestRegistry::start(&db.url_via(cutter.addr)).await;
    let (http, base) = (registry.http(), registry.url());
    let body = json!({"name": "in-flight", "version": "1.0.0", "tags": ["research"]});
    let key = "0b6f4a1e-retry-me";

    cutter.arm();
    let (status, error, retry_after) = register(&http, &base, &body, Some(key)).await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["code"], "outcome_unknown", "{error}");
    assert!(error["message"].as_str().unwrap().contains("may or may not have been applied"), "{error}");
    assert_eq!(retry_after.as_deref(), Some("2"));
    // It was committed.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url).await.unwrap();
    let (stored_id,): (uuid::Uuid,) =
        sqlx::query_as("SELECT id FROM services WHERE name = 'in-flight'").fetch_one(&mut admin).await.unwrap();

    cutter.restore();
    eventually(Duration::from_secs(10), || async { !registry.registry.breaker().is_open() }).await;
    let (status, replayed, _) = register(&http, &base, &body, Some(key)).await;
    assert_eq!(status, 201, "{replayed}");
    assert_eq!(replayed["id"], stored_id.to_string(), "the retry answers the committed service");
    assert_eq!(replayed["revision"], 1);
    // Again: the same answer, nothing new.
    let (status, again, _) = register(&http, &base, &body, Some(key)).await;
    assert_eq!((status, &again["id"]), (201, &replayed["id"]));
    // Without the key the retry would have been refused as a duplicate.
    let (status, error, _) = register(&http, &base, &body, None).await;
    assert_eq!((status, error["code"].as_str()), (409, Some("conflict")));
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM services").fetch_one(&mut admin).await.unwrap();
    assert_eq!(count, 1);
    // The snapshot caught up with the write it could not refresh.
    let got = http.get(format!("{base}/api/v1/services/{stored_id}")).send().await.unwrap();
    assert_eq!(got.status().as_u16(), 200);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
    };
}

on_both_backends!(idempotency_keys_replay_the_first_answer_and_refuse_another_body);

/// registerService's `Idempotency-Key`: the same caller, key and body answer the first
/// answer again (even once the service changed); a different body under the key is 422;
/// keys belong to their caller; they are kept in the store, so another replica on the same
/// database replays them; and an expired key is forgotten.
async fn idempotency_keys_replay_the_first_answer_and_refuse_another_body(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let (http, base) = (registry.http(), registry.url());
    let body = json!({"name": "keyed", "version": "1.0.0", "metadata": {"a": "1", "b": "2"}});
    let key = "key-0001-keyed";

    let (status, first, _) = register(&http, &base, &body, Some(key)).await;
    assert_eq!(status, 201, "{first}");
    // The same request with its members in another order is the same request.
    let reordered = json!({"metadata": {"b": "2", "a": "1"}, "version": "1.0.0", "name": "keyed"});
    let response = http
        .post(format!("{base}/api/v1/services/register"))
        .header("idempotency-key", key)
        .json(&reordered)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers()["location"], format!("/api/v1/services/{}", first["id"].as_str().unwrap()));
    assert_eq!(response.json::<Value>().await.unwrap(), first, "the first answer, replayed");
    // Changed since: the replay is still the first answer.
    let id = first["id"].as_str().unwrap();
    let patched = http.patch(format!("{base}/api/v1/services/{id}")).json(&json!({"version": "2.0.0"})).send();
    assert_eq!(patched.await.unwrap().status().as_u16(), 200);
    let (status, replayed, _) = register(&http, &base, &body, Some(key)).await;
    assert_eq!((status, &replayed), (201, &first));

    // Another body under the key.
    let other = json!({"name": "keyed-too", "version": "1.0.0"});
    let (status, error, _) = register(&http, &base, &other, Some(key)).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["code"], "idempotency_key_reused", "{error}");
    assert!(error["message"].as_str().unwrap().contains("Idempotency-Key"), "{error}");
    // A key that does not meet the contract.
    let (status, error, _) = register(&http, &base, &other, Some("short")).await;
    assert_eq!((status, error["details"][0]["field"].as_str()), (400, Some("Idempotency-Key")), "{error}");

    // Another caller's key of the same name is another key.
    let stranger = TokenIssuer::hs256(SECRET).unwrap().issue(
        "someone-else",
        None,
        &["mesh:read", "mesh:write"],
        Duration::from_secs(600),
    );
    let (status, error, _) = register(&http_client_with_token(&stranger), &base, &body, Some(key)).await;
    assert_eq!((status, error["code"].as_str()), (409, Some("conflict")), "a new registration of a taken name");

    // Another replica on the same store replays it.
    let replica = TestRegistry::start(&db.url).await;
    let (status, replayed, _) = register(&replica.http(), &replica.url(), &body, Some(key)).await;
    assert_eq!((status, &replayed), (201, &first));

    // Once expired (24 h), the key is forgotten: the request runs again and meets the name.
    let day_ago = chrono::Utc::now().timestamp_millis() - 24 * 3600 * 1000 - 1;
    execute(&db.url, format!("UPDATE registry_idempotency_keys SET created_at_ms = {day_ago}")).await;
    let (status, error, _) = register(&http, &base, &body, Some(key)).await;
    assert_eq!((status, error["code"].as_str()), (409, Some("conflict")), "{error}");
    // The expired record is replaced by the next request under the key.
    let (status, _, _) = register(&http, &base, &json!({"name": "fresh", "version": "1.0.0"}), Some(key)).await;
    assert_eq!(status, 201, "the expired record under the key was replaced");
    let (status, _, _) = register(&http, &base, &json!({"name": "fresh", "version": "1.0.0"}), Some(key)).await;
    assert_eq!(status, 201);
    let listed: Value = http.get(format!("{base}/api/v1/services")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
}

/// Runs one statement on the test database, whichever backend.
async fn execute(url: &str, statement: String) {
    use sqlx::Connection;
    if url.starts_with("postgres") {
        let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut connection).await.unwrap();
    } else {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut connection).await.unwrap();
    }
}
