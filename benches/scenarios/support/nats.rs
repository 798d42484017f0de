//! A nats-server with JetStream whose store lives under the scenario's directory (on the
//! measured disk, unlike the tests' server in a temporary directory).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A nats-server with JetStream for the scenario (Debian's package, or `O365_NATS_SERVER`);
/// killed when dropped.
pub struct Nats {
    child: Child,
    pub url: String,
}

impl Nats {
    pub async fn start(dir: &Path) -> Nats {
        let port = free_port();
        let binary = super::common::nats::nats_server_binary();
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("nats"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nats-server.log")).unwrap())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {} ({error}): apt-get install nats-server",
                    binary.display()
                )
            });
        let nats = Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            if let Ok(client) = async_nats::connect(nats.url.as_str()).await
                && client.request("$JS.API.INFO", "".into()).await.is_ok()
            {
                return nats;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
