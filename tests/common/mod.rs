//! Helpers shared by the integration tests: waiting on conditions with a deadline, running
//! the real binary, and a gRPC client of the engine built only from the spec's field tables.
#![allow(dead_code)]

pub mod logs;
pub mod nats;
pub mod queue;
pub mod rig;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use o365_connector::server::dev_certs::DevCertPaths;
use o365_connector::webhook::{self, WebhookState};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Generous deadline for conditions in tests; machines are shared and slow.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The pause before checking again after a check that took `check`: at least 20 ms, and
/// four times the check, so a check over a big soak's records leaves the emulators that
/// share the runtime most of the time.
pub async fn pause_after_check(check: Duration) {
    tokio::time::sleep(Duration::from_millis(20).max(check * 4)).await;
}

/// Polls `condition` until it holds or `deadline` passes; panics with `what` on timeout.
pub async fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`wait_until`] for a condition that must be awaited (a store read, a request).
pub async fn wait_until_async<Check, Checked>(what: &str, deadline: Duration, mut condition: Check)
where
    Check: FnMut() -> Checked,
    Checked: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback port free at the time of the call (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The number in the environment variable `name`, else `default` (soak knobs).
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// An HTTPS client that trusts the CA certificate (PEM) at `ca`, e.g. the dev CA.
pub fn client_trusting(ca: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .build()
        .unwrap()
}

/// The body of a GET of `url` with `client`, as text.
pub async fn get_text(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// The value of one series in a Prometheus exposition `text`; `series` is its name with its
/// labels as exposed (`o365_connector_unclean_restarts_total`,
/// `o365_connector_notifications_total{outcome="accepted"}`).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A configuration for tests of the listener alone: `server_lines` are the whole
/// `[server]` section's keys, the store and the engine socket are in `dir`, the API base is
/// `api_url` (the login authority is never reached), and one tenant `contoso`
/// ([`rig::TENANT`], [`rig::CLIENT`]) reads its secret from the variable `secret_env`.
pub fn listener_config(dir: &Path, server_lines: &str, api_url: &str, secret_env: &str) -> String {
    format!(
        r#"
[server]
{server_lines}
[store]
path = "{store}"
[engine]
socket = "{socket}"
[api]
login_url = "http://127.0.0.1:9"
api_url = "{api_url}"
[[tenants]]
name = "contoso"
tenant_id = "{tenant}"
client_id = "{client}"
client_secret = {{ env = "{secret_env}" }}
"#,
        store = dir.join("store").display(),
        socket = dir.join("engine.sock").display(),
        tenant = rig::TENANT,
        client = rig::CLIENT,
    )
}

/// The `o365-connector` binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_o365-connector"))
}

/// A running `o365-connector` process and the readiness line it printed.
pub struct RunningBinary {
    /// The child process.
    pub child: Child,
    /// The first stdout line (e.g. `listening unix:/tmp/x.sock`).
    pub ready_line: String,
}

/// Starts the binary with `args` and waits for its first stdout line.
pub async fn start_binary(args: &[&str]) -> RunningBinary {
    start_binary_with_env(args, &[]).await
}

/// Starts the binary with `args` and extra environment variables.
pub async fn start_binary_with_env(args: &[&str], env: &[(&str, &str)]) -> RunningBinary {
    start_program_with_stderr(&binary(), args, env, Stdio::inherit()).await
}

/// [`start_binary_with_env`] with its stderr (the log) sent to `stderr`, e.g. a file.
pub async fn start_binary_with_stderr(
    args: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> RunningBinary {
    start_program_with_stderr(&binary(), args, env, stderr).await
}

/// Starts `program` (e.g. a copy of the binary under another name) with `args` and extra
/// environment variables, and waits for its first stdout line.
pub async fn start_program_with_env(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> RunningBinary {
    start_program_with_stderr(program, args, env, Stdio::inherit()).await
}

/// [`start_program_with_env`] with its stderr sent to `stderr`.
pub async fn start_program_with_stderr(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> RunningBinary {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let ready_line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the binary prints its readiness line in time")
        .expect("stdout is readable")
        .expect("the binary printed a line before exiting");
    RunningBinary { child, ready_line }
}

impl RunningBinary {
    /// Kills the process with SIGKILL and reaps it.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("the child is running");
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM and returns the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("the child is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the binary exits after SIGTERM")
            .expect("wait works");
        status.code()
    }
}

/// A gRPC client of `plugins.Engine`, written from the field tables of
/// shared/spec/utmstack-engine.md only (no code generated from our proto file), so that
/// it checks our emulator against the contract rather than against itself.
pub mod spec_client {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::net::UnixStream;
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::transport::{Channel, Endpoint};

    /// `Log` per the spec's table.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SpecLog {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub data_type: String,
        #[prost(string, tag = "3")]
        pub data_source: String,
        #[prost(string, tag = "4")]
        pub timestamp: String,
        #[prost(string, tag = "5")]
        pub tenant_id: String,
        #[prost(string, tag = "6")]
        pub raw: String,
    }

    /// `Ack` per the spec's table.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SpecAck {
        #[prost(string, tag = "1")]
        pub last_id: String,
    }

    /// `Message` per the spec's table.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SpecMessage {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub timestamp: String,
        #[prost(string, tag = "3")]
        pub topic: String,
        #[prost(string, tag = "4")]
        pub message: String,
    }

    /// A Log with recognisable values.
    pub fn log(id: &str) -> SpecLog {
        SpecLog {
            id: id.to_string(),
            data_type: "o365".into(),
            data_source: "contoso".into(),
            timestamp: "2015-06-29T20:03:19Z".into(),
            tenant_id: "ce66672c-e36d-4761-a8c8-90058fee1a24".into(),
            raw: format!(r#"{{"Id":"{id}","Operation":"UserLoggedIn"}}"#),
        }
    }

    /// Connects to a Unix socket (fails if nothing accepts).
    pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
        let socket = socket.to_path_buf();
        Endpoint::from_static("http://engine.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move { UnixStream::connect(socket).await.map(TokioIo::new) }
            }))
            .await
    }

    /// Opens a bidi stream on `method` sending `items`; returns the response stream.
    pub async fn open<M, A>(
        channel: Channel,
        method: &'static str,
        items: impl tokio_stream::Stream<Item = M> + Send + 'static,
    ) -> Result<tonic::Streaming<A>, tonic::Status>
    where
        M: prost::Message + Send + 'static,
        A: prost::Message + Default + Send + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<M, A>::default();
        let response = grpc
            .streaming(
                tonic::Request::new(items),
                PathAndQuery::from_static(method),
                codec,
            )
            .await?;
        Ok(response.into_inner())
    }
}

/// A webhook router served on a free loopback port over TLS with the dev certificates, and
/// a client that trusts them.
pub struct TlsWebhook {
    pub address: SocketAddr,
    pub handle: axum_server::Handle<SocketAddr>,
    pub http: reqwest::Client,
}

/// Serves `state`'s webhook router under `/hook` with `certs`.
pub fn serve_webhook_tls(state: Arc<WebhookState>, certs: &DevCertPaths) -> TlsWebhook {
    let tls = o365_connector::server::server_config(&certs.server_cert, &certs.server_key).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
    )
    .unwrap()
    .handle(handle.clone());
    tokio::spawn(server.serve(webhook::router(state, "/hook").into_make_service()));
    let http = client_trusting(&certs.ca);
    TlsWebhook {
        address,
        handle,
        http,
    }
}
