//! A real `nats-server` with JetStream for the tests, on a free loopback port, with its
//! store in a temporary directory. `.ci/run` and the README install it (Debian's
//! `nats-server` package); `O365_NATS_SERVER` names another binary.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::DEADLINE;

/// A running nats-server; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    /// Extra command-line arguments (e.g. TLS).
    args: Vec<String>,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    /// The user and password the server requires, if any (readiness is probed with them).
    user_password: Option<(String, String)>,
    dir: tempfile::TempDir,
}

/// The nats-server binary: `O365_NATS_SERVER`, else on `PATH`, else Debian's path.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("O365_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    let binary = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
    assert!(
        binary.is_file(),
        "nats-server is not installed: `apt-get install nats-server` (see the README), or set O365_NATS_SERVER"
    );
    binary
}

impl NatsServer {
    /// Starts a server with JetStream and waits until it accepts connections.
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    /// [`Self::start`] requiring `user` and `password` from every client.
    pub async fn start_with_password(user: &str, password: &str) -> Self {
        let args = ["--user", user, "--pass", password].map(str::to_owned);
        let mut server = Self::unstarted(args.to_vec());
        server.user_password = Some((user.to_owned(), password.to_owned()));
        server.restart().await;
        server
    }

    /// [`Self::start`] with extra arguments; with `--tls`, readiness is waited for on the
    /// TCP port alone.
    pub async fn start_with(args: Vec<String>) -> Self {
        let mut server = Self::unstarted(args);
        server.restart().await;
        server
    }

    fn unstarted(args: Vec<String>) -> Self {
        let port = super::free_port();
        let tls = args.iter().any(|arg| arg == "--tls");
        let url = if tls {
            format!("tls://localhost:{port}")
        } else {
            format!("nats://127.0.0.1:{port}")
        };
        Self {
            child: None,
            args,
            user_password: None,
            url,
            port,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Client options with the server's user and password, if it requires them.
    fn probe_options(&self) -> async_nats::ConnectOptions {
        match &self.user_password {
            Some((user, password)) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            None => async_nats::ConnectOptions::new(),
        }
    }

    /// Kills the server (SIGKILL); its store stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.dir.path().join("nats-server.log")).unwrap();
        let child = Command::new(nats_server_binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path().join("jetstream"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let started = std::time::Instant::now();
        loop {
            if self.url.starts_with("tls://") {
                if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
                {
                    return;
                }
                assert!(started.elapsed() < DEADLINE, "nats-server did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let error = match self.probe_options().connect(self.url.as_str()).await {
                Ok(client) => match client.request("$JS.API.INFO", "".into()).await {
                    Ok(reply) if !reply.payload.is_empty() => return,
                    Ok(_) => "JetStream is not answering yet".to_owned(),
                    Err(error) => error.to_string(),
                },
                Err(error) => error.to_string(),
            };
            assert!(
                started.elapsed() < DEADLINE,
                "nats-server did not start ({error}); its log: {}",
                std::fs::read_to_string(self.dir.path().join("nats-server.log"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
