//! A whole connector on real sockets: the API emulator over TLS (dev certificates), the
//! engine emulator on a temp Unix socket, and the service started in-process from a
//! configuration text, with its webhook on a listener bound before the config is written
//! (so the public URL names the real port).

use std::path::PathBuf;
use std::time::Duration;

use o365_connector::clock::Clock;
use o365_connector::config::Config;
use o365_connector::emulator::api::publish::PublishedRecord;
use o365_connector::emulator::api::scenario::{Scenario, TenantScenario};
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig, TlsFiles};
use o365_connector::emulator::engine::{EngineEmulator, EngineEmulatorConfig, ReceivedLog};
use o365_connector::retry::RetryPolicy;
use o365_connector::server::dev_certs::{DevCertPaths, write_dev_certs};
use o365_connector::service::{self, RunningService, ServiceOptions};
use sha2::{Digest, Sha256};

pub const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
pub const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
pub const SECRET: &str = "rig-client-secret";
pub const GROUP: &str = "contoso";

/// Every fixture record (one per line of tests/fixtures/events/*.ndjson), in a file.
pub fn all_fixture_records(dir: &std::path::Path) -> PathBuf {
    let events = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
    let mut files: Vec<_> = std::fs::read_dir(&events)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    let mut all = String::new();
    for file in files {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let line = line.trim_end_matches('\r');
            if !line.is_empty() {
                all.push_str(line);
                all.push('\n');
            }
        }
    }
    let path = dir.join("all-records.ndjson");
    std::fs::write(&path, all).unwrap();
    path
}

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub certs: DevCertPaths,
    pub api: ApiEmulator,
    pub engine: EngineEmulator,
    pub service: Option<RunningService>,
    pub config_text: String,
    earlier_logs: Vec<ReceivedLog>,
    engine_socket: Option<PathBuf>,
}

/// How to build a rig.
pub struct RigOptions {
    pub tenant: TenantScenario,
    pub webhook: bool,
    /// Lines added to the `[ops]` section.
    pub extra_config: String,
    /// `ops.public`: whether the webhook listener serves `/status`, `/metrics` and the
    /// `/readyz` detail. True by default here, so tests read them on `base_url`; tests of
    /// the private default set it to false.
    pub ops_public: bool,
    /// Start the service in this process (otherwise the test runs the binary).
    pub in_process: bool,
    /// The emulator's per-tenant request budget.
    pub throttle: o365_connector::emulator::api::scenario::ThrottleScenario,
    /// Authenticate with the test app certificate (tests/fixtures/app-cert) instead of the
    /// client secret.
    pub certificate: bool,
    /// With `certificate`: sign with this key instead of the certificate's own.
    pub key_override: Option<PathBuf>,
    /// `tenants.risk_detections`: also collect Entra ID risk detections from the
    /// emulator's Graph endpoint (`api.graph_url` is always the emulator).
    pub risk_detections: bool,
}

impl RigOptions {
    pub fn fixture_records(dir: &std::path::Path) -> Self {
        let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
        tenant.publication.records = Some(all_fixture_records(dir));
        tenant.publication.records_per_blob = 10;
        Self {
            tenant,
            webhook: true,
            extra_config: String::new(),
            ops_public: true,
            in_process: true,
            throttle: Default::default(),
            certificate: false,
            key_override: None,
            risk_detections: false,
        }
    }
}

impl RigOptions {
    /// Synthetic records (unique Ids), 10 per blob, with `faults`.
    pub fn synthetic(faults: o365_connector::emulator::api::scenario::FaultScenario) -> Self {
        let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
        tenant.publication.records_per_blob = 10;
        tenant.faults = faults;
        Self {
            tenant,
            webhook: true,
            extra_config: String::new(),
            ops_public: true,
            in_process: true,
            throttle: Default::default(),
            certificate: false,
            key_override: None,
            risk_detections: false,
        }
    }
}

impl Rig {
    /// Waits until every record the emulator published was acked by the engine at least
    /// once (compared by the SHA-256 of the exact bytes).
    /// Every Log received so far, by this engine emulator and by those it replaced.
    pub fn all_logs(&self) -> Vec<ReceivedLog> {
        let mut logs = self.earlier_logs.clone();
        logs.extend(self.engine.logs());
        logs
    }

    /// Stops the engine emulator (its connections end, its socket goes away).
    pub async fn stop_engine(&mut self) {
        let socket = self.engine.socket_path().to_path_buf();
        self.earlier_logs.extend(self.engine.logs());
        let replacement = EngineEmulator::start(EngineEmulatorConfig::in_memory(
            self.dir.path().join("spare-engine.sock"),
        ))
        .await
        .unwrap();
        let stopped = std::mem::replace(&mut self.engine, replacement);
        stopped.shutdown().await;
        self.engine_socket = Some(socket);
    }

    /// Starts a new engine emulator on the socket of the stopped one, refusing
    /// connections until told otherwise.
    pub async fn restart_engine_refusing(&mut self) {
        let socket = self.engine_socket.take().expect("stop_engine first");
        let restarted = EngineEmulator::start(EngineEmulatorConfig::in_memory(socket))
            .await
            .unwrap();
        restarted.refuse_connections_for(Duration::from_secs(3600));
        let spare = std::mem::replace(&mut self.engine, restarted);
        spare.shutdown().await;
    }

    pub async fn wait_for_every_published_record(&self) {
        let started = std::time::Instant::now();
        // Hash each received Log once: the engine's log only grows.
        let mut acked: std::collections::HashSet<String> = self
            .earlier_logs
            .iter()
            .filter(|log| log.acked)
            .map(|log| sha256_hex(log.raw.as_bytes()))
            .collect();
        let mut seen = 0;
        loop {
            let check_started = std::time::Instant::now();
            let new = self.engine.logs_from(seen);
            seen += new.len();
            acked.extend(
                new.iter()
                    .filter(|log| log.acked)
                    .map(|log| sha256_hex(log.raw.as_bytes())),
            );
            let published = self.published();
            let missing = published
                .iter()
                .filter(|record| !acked.contains(&record.sha256))
                .count();
            if missing == 0 && !published.is_empty() {
                return;
            }
            // Big soak runs get more time: a second per thousand records on top.
            let deadline = super::DEADLINE + Duration::from_secs(published.len() as u64 / 1000);
            assert!(
                started.elapsed() < deadline,
                "{missing} of {} published records never reached the engine",
                published.len()
            );
            super::pause_after_check(check_started.elapsed()).await;
        }
    }

    pub async fn start(dir: tempfile::TempDir, mut options: RigOptions) -> Rig {
        let (certs, _) = write_dev_certs(&dir.path().join("certs"), false).unwrap();
        let app_cert =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app-cert");
        let credential = if options.certificate {
            options.tenant.certificate = Some(app_cert.join("app.pem"));
            format!(
                "certificate = {{ cert = \"{}\", key = \"{}\" }}",
                app_cert.join("app.pem").display(),
                options
                    .key_override
                    .clone()
                    .unwrap_or_else(|| app_cert.join("app-key.pem"))
                    .display()
            )
        } else {
            "client_secret = { env = \"RIG_SECRET\" }".to_string()
        };
        let api = ApiEmulator::start(ApiEmulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            scenario: Scenario {
                throttle: options.throttle.clone(),
                ..Scenario::single_tenant(options.tenant)
            },
            tls: Some(TlsFiles {
                cert: certs.server_cert.clone(),
                key: certs.server_key.clone(),
            }),
            webhook_ca: Some(certs.ca.clone()),
            clock: Clock::system(),
        })
        .await
        .unwrap();
        let engine = EngineEmulator::start(EngineEmulatorConfig::in_memory(
            dir.path().join("engine.sock"),
        ))
        .await
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let public_url = if options.webhook {
            format!("public_url = \"https://localhost:{port}/hook\"")
        } else {
            String::new()
        };
        let config_text = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
{public_url}
tls_cert = "{cert}"
tls_key = "{key}"

[store]
path = "{store}"

[engine]
socket = "{socket}"

[api]
login_url = "{base}"
api_url = "{base}"
graph_url = "{base}"
ca_file = "{ca}"

[workers]
count = 2

[ops]
shutdown_secs = 3
public = {ops_public}
{extra}

[[tenants]]
name = "{GROUP}"
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
risk_detections = {risk_detections}
{credential}
"#,
            cert = certs.server_cert.display(),
            key = certs.server_key.display(),
            store = dir.path().join("store").display(),
            socket = dir.path().join("engine.sock").display(),
            base = api.base_url(),
            ca = certs.ca.display(),
            extra = options.extra_config,
            ops_public = options.ops_public,
            risk_detections = options.risk_detections,
        );
        let mut rig = Rig {
            dir,
            certs,
            api,
            engine,
            service: None,
            config_text,
            earlier_logs: Vec::new(),
            engine_socket: None,
        };
        if options.in_process {
            rig.start_service(Some(listener)).await;
        }
        rig
    }

    /// Writes the configuration to a file for the binary; its secret comes from the
    /// environment variable `RIG_SECRET`.
    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, &self.config_text).unwrap();
        path
    }

    pub fn config(&self) -> Config {
        Config::from_toml_with_env(
            &self.config_text,
            [("RIG_SECRET".to_string(), SECRET.to_string())],
        )
        .unwrap()
    }

    pub async fn start_service(&mut self, listener: Option<std::net::TcpListener>) {
        let listener = listener.unwrap_or_else(|| {
            let address = self.config().server.listen;
            std::net::TcpListener::bind(address).unwrap()
        });
        let options = ServiceOptions {
            listener: Some(listener),
            retry: RetryPolicy::for_test(),
            idle_poll: Duration::from_millis(50),
            ..ServiceOptions::default()
        };
        self.service = Some(service::start(self.config(), options).await.unwrap());
    }

    pub async fn stop_service(&mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await;
        }
    }

    /// Waits until Microsoft (the emulator) has a webhook for each content type.
    pub async fn wait_for_webhooks(&self, content_types: &[&str]) {
        let state = self.api.state().clone();
        let content_types: Vec<String> = content_types.iter().map(|ct| ct.to_string()).collect();
        super::wait_until("subscriptions with webhooks", super::DEADLINE, || {
            content_types
                .iter()
                .all(|ct| state.feed.active_webhook(TENANT, ct).is_some())
        })
        .await;
    }

    pub fn published(&self) -> Vec<PublishedRecord> {
        self.api.state().publisher.published()
    }

    /// Waits until the engine acked `count` Logs.
    pub async fn wait_for_acked(&self, count: u64) {
        self.engine
            .wait_for(super::DEADLINE, |counts| counts.logs_acked >= count)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the engine acked {} of {count} logs",
                    self.engine.counts().logs_acked
                )
            });
    }

    pub async fn shutdown(mut self) {
        self.stop_service().await;
        self.api.shutdown().await;
        self.engine.shutdown().await;
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The engine's acked Logs by the SHA-256 of their raw record.
pub fn acked_by_sha(logs: &[ReceivedLog]) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for log in logs.iter().filter(|log| log.acked) {
        *counts.entry(sha256_hex(log.raw.as_bytes())).or_insert(0) += 1;
    }
    counts
}
