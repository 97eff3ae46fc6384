//! Idle connections parked outside tasks, through a real listener: they come back to
//! the handler on their next bytes, keep their slot while parked, and are closed by the
//! idle timeout, by shutdown, or when the client goes.

use pake_listen::{Limits, Server, Settings};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const IDLE: Duration = Duration::from_millis(600);

/// The client address of each call of the handler.
type Calls = Arc<Mutex<Vec<SocketAddr>>>;

/// A line protocol that keeps nothing between lines: each line is echoed, then the
/// connection is parked until the next.
async fn echo_then_park(stream: TcpStream, client: SocketAddr, conn: pake_listen::Conn, calls: Calls) {
    calls.lock().unwrap().push(client);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let mut stream = reader.into_inner();
    if stream.write_all(line.as_bytes()).await.is_err() {
        return;
    }
    conn.park(stream, Instant::now());
}

struct Running {
    server: Server,
    addr: SocketAddr,
    calls: Calls,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Running {
    let settings = Settings { idle_timeout: IDLE, max_connections: 64, ..Settings::default() };
    let server = Limits::new(settings).server();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Calls::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn({
        let (server, calls) = (server.clone(), calls.clone());
        async move {
            server
                .serve(
                    listener,
                    async {
                        let _ = stopped.await;
                    },
                    move |stream, client, conn| echo_then_park(stream, client, conn, calls.clone()),
                )
                .await
        }
    });
    Running { server, addr, calls, stop: Some(stop), served }
}

impl Running {
    fn parked(&self) -> i64 {
        self.server.stats().parked.get()
    }

    fn open(&self) -> usize {
        self.server.limits().open()
    }

    /// Waits until the parked and open counts are as given.
    async fn settles(&self, parked: i64, open: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while (self.parked(), self.open()) != (parked, open) {
            assert!(
                Instant::now() < deadline,
                "parked {} open {}, expected {parked} {open}",
                self.parked(),
                self.open()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn echo(stream: &mut TcpStream, line: &str) {
    stream.write_all(line.as_bytes()).await.unwrap();
    let mut answer = vec![0; line.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer)).await.unwrap().unwrap();
    assert_eq!(answer, line.as_bytes());
}

/// Reads until the server closes, within `limit`; how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(limit, stream.read(&mut byte)).await.expect("the server closes in time");
    assert!(matches!(read, Ok(0) | Err(_)), "closed without a byte: {read:?}");
    started.elapsed()
}

#[tokio::test]
async fn a_parked_connection_comes_back_for_its_next_request_and_idles_out_with_its_slot() {
    let running = start().await;
    let mut client = TcpStream::connect(running.addr).await.unwrap();
    echo(&mut client, "first\n").await;
    running.settles(1, 1).await;
    // Its next bytes bring it back to the handler, on a new task, and it parks again.
    for n in 0..3 {
        echo(&mut client, &format!("again {n}\n")).await;
        running.settles(1, 1).await;
    }
    // Each time with the client's address, asked of the socket again after the lot.
    let own = client.local_addr().unwrap();
    assert_eq!(*running.calls.lock().unwrap(), vec![own; 4]);
    assert_eq!(running.server.stats().idle_timeouts.get(), 0);

    // Left idle: closed after the idle timeout (counted from its last answer), the slot
    // given back.
    let took = closed_within(&mut client, IDLE * 4).await;
    assert!(took >= IDLE - Duration::from_millis(100), "closed after {took:?}, before the idle timeout");
    running.settles(0, 0).await;
    assert_eq!(running.server.stats().idle_timeouts.get(), 1);
    assert_eq!(running.server.stats().open.get(), 0);
}

#[tokio::test]
async fn a_client_closing_a_parked_connection_frees_its_slot() {
    let running = start().await;
    let mut clients = Vec::new();
    for n in 0..5 {
        let mut client = TcpStream::connect(running.addr).await.unwrap();
        echo(&mut client, &format!("{n}\n")).await;
        clients.push(client);
    }
    running.settles(5, 5).await;
    // Two close, one resets: the lot can no longer ask a reset one its client's address.
    clients[4].set_zero_linger().unwrap();
    clients.truncate(2);
    running.settles(2, 2).await;
    // The two left still work.
    for client in &mut clients {
        echo(client, "still here\n").await;
    }
    running.settles(2, 2).await;
    assert_eq!(running.server.stats().idle_timeouts.get(), 0, "gone clients are not idle timeouts");
}

#[tokio::test]
async fn shutdown_closes_parked_connections_at_once() {
    let mut running = start().await;
    let mut clients = Vec::new();
    for n in 0..3 {
        let mut client = TcpStream::connect(running.addr).await.unwrap();
        echo(&mut client, &format!("{n}\n")).await;
        clients.push(client);
    }
    running.settles(3, 3).await;
    running.stop.take().unwrap().send(()).unwrap();
    for client in &mut clients {
        let took = closed_within(client, Duration::from_secs(2)).await;
        assert!(took < IDLE, "closed by shutdown, not by the idle timeout ({took:?})");
    }
    tokio::time::timeout(Duration::from_secs(5), &mut running.served).await.unwrap().unwrap().unwrap();
    assert_eq!(running.open(), 0);
    assert_eq!(running.parked(), 0);
}
