//! Running the real `pake` binary in tests: start it with an environment, learn where its
//! services listen from its JSON log, and keep draining its output.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `pake` process; killed when dropped.
pub struct Pake {
    pub child: Child,
    /// Listening addresses by service: "registry", "gateway".
    pub addrs: HashMap<&'static str, SocketAddr>,
    /// Every line it has logged so far (JSON).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Pake {
    /// Runs `pake serve {services}` on ephemeral ports with `env`, and waits until every
    /// named service listens.
    pub async fn start(services: &[&'static str], env: &[(&str, String)]) -> Pake {
        Pake::start_under(&[], services, env).await
    }

    /// [`Pake::start`], run by `wrapper` (a command and its arguments, e.g. `prlimit
    /// --nofile=1024:2048 --`) when it is not empty.
    pub async fn start_under(wrapper: &[&str], services: &[&'static str], env: &[(&str, String)]) -> Pake {
        let mut command = match wrapper.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(env!("CARGO_BIN_EXE_pake"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_pake")),
        };
        command
            .arg("serve")
            .args(services)
            .env("PAKE_GATEWAY_ADDR", "127.0.0.1:0")
            .env("PAKE_REGISTRY_ADDR", "127.0.0.1:0")
            .env("PAKE_PERFORMANCE_ADDR", "127.0.0.1:0")
            .env("PAKE_MONITORING_ADDR", "127.0.0.1:0")
            .env("PAKE_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("pake starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let addrs = tokio::time::timeout(Duration::from_secs(30), async {
            let mut addrs = HashMap::new();
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                log.lock().unwrap().push(line.clone());
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                let (Some(addr), Some(message)) = (event["addr"].as_str(), event["message"].as_str()) else { continue };
                let addr = addr.parse::<SocketAddr>().expect("an address");
                for service in services {
                    if message.starts_with(&format!("{service} listening"))
                        || message.starts_with(&format!("{service} service listening"))
                    {
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
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        Pake { child, addrs, log }
    }

    /// The logged events whose message contains `text`.
    pub fn logged(&self, text: &str) -> Vec<serde_json::Value> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["message"].as_str().is_some_and(|message| message.contains(text)))
            .collect()
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
