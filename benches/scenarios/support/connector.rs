//! The connector process: its configuration file, its start (until `/readyz` answers), its
//! resource use read from `/proc`, its graceful stop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A connector process; killed when dropped.
pub struct Connector {
    child: Child,
    /// `http://127.0.0.1:PORT`, its HTTP listener.
    pub listen: String,
}

/// Options of one connector configuration.
pub struct ConnectorSetup<'a> {
    pub dir: &'a Path,
    pub socket: &'a Path,
    pub api_base: &'a str,
    pub requests_per_minute: u64,
    pub tenants: &'a [String],
    pub webhook: bool,
    pub poller: &'a str,
    /// TOML appended to the file (e.g. `[store.nats]`), and `[store]` keys before it.
    pub store: (&'a str, &'a str),
}

/// Writes the configuration of `setup` listening on `port`; the file's path. Secrets are
/// `{ env = … }` references to `BENCH_SECRET` and `BENCH_WEBHOOK_SECRET`.
pub fn write_config(setup: &ConnectorSetup<'_>, port: u16) -> PathBuf {
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n{webhook}\n[store]\npath = \"{store}\"\n{store_keys}\n\
         [engine]\nsocket = \"{socket}\"\n[api]\nlogin_url = \"{base}\"\napi_url = \"{base}\"\n\
         requests_per_minute = {rpm}\n[workers]\ncount = {workers}\n[poller]\n{poller}\n",
        webhook = if setup.webhook {
            format!(
                "public_url = \"http://127.0.0.1:{port}/hook\"\n\
                 webhook_secret = {{ env = \"BENCH_WEBHOOK_SECRET\" }}"
            )
        } else {
            String::new()
        },
        store = setup.dir.join("store").display(),
        store_keys = setup.store.0,
        socket = setup.socket.display(),
        base = setup.api_base,
        rpm = setup.requests_per_minute,
        poller = setup.poller,
        workers = bench_workers(),
    );
    for (index, tenant_id) in setup.tenants.iter().enumerate() {
        let name = if index == 0 {
            GROUP.to_string()
        } else {
            format!("t{index}")
        };
        toml.push_str(&format!(
            "[[tenants]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\nclient_id = \"{CLIENT}\"\n\
             client_secret = {{ env = \"BENCH_SECRET\" }}\ncontent_types = [\"Audit.General\"]\n"
        ));
    }
    toml.push_str(setup.store.1);
    let path = setup.dir.join("connector.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

impl Connector {
    /// Starts the release binary and waits for its `/readyz` to answer 200.
    pub async fn start(setup: ConnectorSetup<'_>) -> Connector {
        Self::start_binary(setup, Path::new(env!("CARGO_BIN_EXE_o365-connector"))).await
    }

    /// Starts `binary` (another build of the connector) and waits for its `/readyz`.
    pub async fn start_binary(setup: ConnectorSetup<'_>, binary: &Path) -> Connector {
        let port = free_port();
        let config = write_config(&setup, port);
        let log = std::fs::File::create(setup.dir.join("connector.log")).unwrap();
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&config)
            .env("BENCH_SECRET", SECRET)
            .env("BENCH_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let connector = Connector {
            child,
            listen: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let ready = http
                .get(format!("{}/readyz", connector.listen))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return connector;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the connector is not ready; see {}",
                setup.dir.join("connector.log").display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set (`VmHWM`) in bytes.
    pub fn peak_rss(&self) -> f64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024.0
    }

    /// Current resident set (`VmRSS`) in bytes.
    pub fn rss(&self) -> f64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024.0
    }

    /// utime + stime in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        stat_cpu_seconds(&format!("/proc/{}/stat", self.pid()))
    }

    /// SIGTERM, then waits for a graceful exit (SIGKILL after 30 s, by `Drop`).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// utime + stime in seconds of the process or thread whose `stat` file (proc(5)) is `path`
/// (`/proc/<pid>/stat`, `/proc/self/task/<tid>/stat`).
pub fn stat_cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks_per_second()
}

impl Drop for Connector {
    /// A scenario that panics leaves no connector behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn proc_status_kib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The connector's worker count: its default (16) unless `BENCH_WORKERS` says otherwise.
pub fn bench_workers() -> usize {
    env_number("BENCH_WORKERS", 16)
}

/// Starts one connector that only polls (one tenant, the embedded store, no webhook, no
/// request budget) on the backlog the API emulator at `api_base` holds, and waits up to
/// ten minutes until the engine acked `records`. Returns the connector, still running for
/// its figures, and the seconds from its start to the last ack.
pub async fn drain_backlog(
    dir: &Path,
    socket: &Path,
    api_base: &str,
    engine: &EngineState,
    records: u64,
) -> (Connector, f64) {
    let started = Instant::now();
    let connector = Connector::start(ConnectorSetup {
        dir,
        socket,
        api_base,
        requests_per_minute: 1_000_000,
        tenants: &[TENANT.to_string()],
        webhook: false,
        poller: &eager_poller(1),
        store: ("", ""),
    })
    .await;
    wait_until("the backlog drained", Duration::from_secs(600), || {
        engine.acked.load(std::sync::atomic::Ordering::Relaxed) >= records
    })
    .await;
    (connector, started.elapsed().as_secs_f64())
}
