//! Running the real `pake` binary in tests: start it with an environment, learn where its
//! services listen from its JSON log, and keep draining its output.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `pake` process; killed when dropped.
pub struct Pake {
    pub child: Child,
    /// Listening addresses by service: "registry", "gateway".
    pub addrs: HashMap<&'static str, SocketAddr>,
}

impl Pake {
    /// Runs `pake serve {services}` on ephemeral ports with `env`, and waits until every
    /// named service listens.
    pub async fn start(services: &[&'static str], env: &[(&str, String)]) -> Pake {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pake"));
        command
            .arg("serve")
            .args(services)
            .env("PAKE_GATEWAY_ADDR", "127.0.0.1:0")
            .env("PAKE_REGISTRY_ADDR", "127.0.0.1:0")
            .env("PAKE_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("pake starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addrs = tokio::time::timeout(Duration::from_secs(30), async {
            let mut addrs = HashMap::new();
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                let (Some(addr), Some(message)) = (event["addr"].as_str(), event["message"].as_str()) else { continue };
                let addr = addr.parse::<SocketAddr>().expect("an address");
                for service in services {
                    if message.starts_with(&format!("{service} listening")) {
                        addrs.insert(*service, addr);
                    }
                }
                if services.iter().all(|s| addrs.contains_key(s)) {
                    return addrs;
                }
            }
            panic!("pake exited before listening");
        })
        .await
        .expect("pake listens within 30 s");
        // Keep draining its output so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Pake { child, addrs }
    }

    pub fn url(&self, service: &str) -> String {
        format!("http://{}", self.addrs[service])
    }

    /// SIGKILL: no shutdown hook, no flush, nothing graceful.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill -9");
        self.child.wait().await.expect("reaped");
    }
}

/// A private `redis-server` on its own port, for tests that kill and restart Redis. Killed
/// when dropped.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let mut redis = PrivateRedis { port, child: None };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again) on the same port, empty, and waits until it answers.
    pub async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        for _ in 0..100 {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else { return false };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").await.is_ok()
            && stream.read_exact(&mut reply).await.is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// SIGKILL, and waits until the port refuses connections.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        while self.ping().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
