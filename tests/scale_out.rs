//! Several replicas of the real binary on one nats-server, behind a round-robin proxy, with
//! the emulators: notifications spread over the replicas; one replica and then the lease
//! holder are killed with SIGKILL mid-drain; a replica started later joins. Every record
//! reaches the engine (duplicates only for records in flight at a kill, printed), and the
//! API emulator's request log, by replica id and time, shows the poller and subscription
//! manager never ran on two replicas at once.
//!
//! CI drains 600 records, then 400 more after the kills. The soak variant is the same test
//! with `O365_SCALE_BLOBS` blobs of 10 records in the first wave, e.g.
//! `O365_SCALE_BLOBS=3000 cargo test --release --test scale_out -- --nocapture`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use common::nats::NatsServer;
use common::rig::{Rig, RigOptions, SECRET, TENANT};
use common::{
    DEADLINE, RunningBinary, client_trusting, env_number, free_port, start_binary_with_env,
};
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::CONTENT_TYPES as ALL;
use o365_connector::emulator::api::scenario::FaultScenario;
use o365_connector::emulator::engine::EngineFaults;

/// Endpoints only the leader (poller, subscription manager) calls.
const LEADER_ENDPOINTS: [&str; 3] = [
    "/subscriptions/content",
    "/subscriptions/list",
    "/subscriptions/start",
];

/// A round-robin reverse proxy in front of the replicas' webhooks, as a load balancer would
/// be: each request goes to the next replica; one that does not answer is skipped.
#[derive(Clone)]
struct Proxy {
    backends: Arc<Mutex<Vec<u16>>>,
    next: Arc<AtomicUsize>,
    /// Webhook calls answered, by replica port and status.
    answered: Arc<Mutex<BTreeMap<(u16, u16), u64>>>,
    http: reqwest::Client,
}

async fn round_robin(State(proxy): State<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 << 20).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let backends = proxy.backends.lock().unwrap().clone();
    let start = proxy.next.fetch_add(1, Ordering::Relaxed);
    for offset in 0..backends.len() {
        let port = backends[(start + offset) % backends.len()];
        let mut headers = parts.headers.clone();
        headers.remove(axum::http::header::HOST);
        headers.remove(axum::http::header::CONTENT_LENGTH);
        let sent = proxy
            .http
            .request(
                parts.method.clone(),
                format!("https://localhost:{port}{path}"),
            )
            .headers(headers)
            .body(body.clone())
            .send()
            .await;
        let Ok(answer) = sent else {
            continue; // down: the next replica
        };
        let status = answer.status();
        *proxy
            .answered
            .lock()
            .unwrap()
            .entry((port, status.as_u16()))
            .or_default() += 1;
        let headers = answer.headers().clone();
        let body = answer.bytes().await.unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        return response;
    }
    StatusCode::BAD_GATEWAY.into_response()
}

struct Replica {
    id: String,
    port: u16,
    process: Option<RunningBinary>,
}

struct Cluster {
    rig: Rig,
    _nats: NatsServer,
    proxy: Proxy,
    /// The rig's configuration with the proxy as public URL and the NATS store.
    config_text: String,
    listen_port: u16,
    replicas: Vec<Replica>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start() -> Cluster {
        let nats = NatsServer::start().await;
        let mut options = RigOptions::synthetic(FaultScenario::default());
        options.in_process = false;
        options.throttle.requests_per_window = 0;
        let rig = Rig::start(tempfile::tempdir().unwrap(), options).await;
        let listen_port = rig.config().server.listen.port();
        let http = client_trusting(&rig.certs.ca);
        let proxy = Proxy {
            backends: Arc::default(),
            next: Arc::default(),
            answered: Arc::default(),
            http: http.clone(),
        };
        // The proxy listens on a port of its own, which becomes the public URL's.
        let tls =
            o365_connector::server::server_config(&rig.certs.server_cert, &rig.certs.server_key)
                .unwrap();
        let public_port = free_port();
        let listener = std::net::TcpListener::bind(("127.0.0.1", public_port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let app = axum::Router::new()
            .fallback(round_robin)
            .with_state(proxy.clone());
        tokio::spawn(
            axum_server::from_tcp_rustls(
                listener,
                axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
            )
            .unwrap()
            .serve(app.into_make_service()),
        );
        let config_text = rig
            .config_text
            .replace(
                &format!("localhost:{listen_port}/hook"),
                &format!("localhost:{public_port}/hook"),
            )
            .replacen("[store]\n", "[store]\nbackend = \"nats\"\n", 1)
            .replacen("[api]\n", "[api]\nrequests_per_minute = 1000000\n", 1)
            .replacen(
                "[workers]\ncount = 2\n",
                "[poller]\npoll_interval_secs = 2\nlag_secs = 0\n\n[workers]\ncount = 2\nlease_secs = 5\n",
                1,
            )
            + &format!(
                "\n[store.nats]\nurls = [\"{}\"]\nleader_lease_secs = 3\nprefix = \"scale\"\n",
                nats.url
            );
        Cluster {
            rig,
            _nats: nats,
            proxy,
            config_text,
            listen_port,
            replicas: Vec::new(),
            http,
        }
    }

    /// Starts replica `id` and puts it behind the proxy.
    async fn start_replica(&mut self, id: &str) {
        let port = free_port();
        let store = self.rig.dir.path().join(format!("store-{id}"));
        let text = self
            .config_text
            .replace(
                &format!("listen = \"127.0.0.1:{}\"", self.listen_port),
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace(
                &format!("path = \"{}\"", self.rig.dir.path().join("store").display()),
                &format!("path = \"{}\"", store.display()),
            )
            .replacen(
                "[store.nats]\n",
                &format!("[store.nats]\nreplica_id = \"{id}\"\n"),
                1,
            );
        let path: PathBuf = self.rig.dir.path().join(format!("config-{id}.toml"));
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_owned();
        let env = [("RIG_SECRET", SECRET), ("RUST_LOG", "warn")];
        let running = start_binary_with_env(&["run", "--config", path.as_str()], &env).await;
        assert!(
            running.ready_line.starts_with("listening https://"),
            "{}",
            running.ready_line
        );
        self.proxy.backends.lock().unwrap().push(port);
        self.replicas.push(Replica {
            id: id.to_owned(),
            port,
            process: Some(running),
        });
    }

    /// SIGKILLs replica `id` and takes it out of the proxy.
    async fn kill(&mut self, id: &str) {
        let replica = self
            .replicas
            .iter_mut()
            .find(|replica| replica.id == id)
            .unwrap();
        self.proxy
            .backends
            .lock()
            .unwrap()
            .retain(|port| *port != replica.port);
        replica.process.take().unwrap().kill().await;
    }

    /// A replica's JSON answer at `path` (`/status`, `/readyz`), if it answers.
    async fn get_json(&self, port: u16, path: &str) -> Option<serde_json::Value> {
        let answer = self
            .http
            .get(format!("https://localhost:{port}{path}"))
            .send()
            .await
            .ok()?;
        answer.json().await.ok()
    }

    /// The lease holder as the live replicas see it, once they agree on a live one.
    async fn leader(&self) -> String {
        let started = std::time::Instant::now();
        let live: Vec<&Replica> = self
            .replicas
            .iter()
            .filter(|replica| replica.process.is_some())
            .collect();
        loop {
            let mut seen = Vec::new();
            for replica in &live {
                let status = self.get_json(replica.port, "/status").await;
                let leader = status
                    .as_ref()
                    .and_then(|status| status["cluster"]["leader"].as_str())
                    .map(str::to_owned);
                seen.push(leader);
            }
            if let Some(Some(first)) = seen.first()
                && seen.iter().all(|leader| leader.as_deref() == Some(first))
                && live.iter().any(|replica| &replica.id == first)
            {
                return first.clone();
            }
            assert!(started.elapsed() < DEADLINE, "no agreed leader: {seen:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn publish(&self, blobs: usize) {
        publish::publish_now(self.rig.api.state(), TENANT, "Audit.General", blobs).await;
    }

    /// Records the engine acknowledged to this replica, from its metrics.
    async fn records_acked_by(&self, port: u16) -> u64 {
        let Ok(answer) = self
            .http
            .get(format!("https://localhost:{port}/metrics"))
            .send()
            .await
        else {
            return 0;
        };
        let text = answer.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with("o365_connector_records_acked_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn answered_by(&self, port: u16) -> u64 {
        self.proxy
            .answered
            .lock()
            .unwrap()
            .iter()
            .filter(|((backend, status), _)| *backend == port && *status == 200)
            .map(|(_, count)| count)
            .sum()
    }
}

/// The replica id in `o365-connector/VERSION (replica ID)`.
fn replica_of(user_agent: Option<&str>) -> Option<String> {
    let rest = user_agent?.split("(replica ").nth(1)?;
    Some(rest.trim_end_matches(')').to_owned())
}

#[tokio::test]
async fn three_replicas_lose_nothing_when_a_replica_and_then_the_leader_die() {
    let mut cluster = Cluster::start().await;
    for id in ["r1", "r2", "r3"] {
        cluster.start_replica(id).await;
    }
    cluster.rig.wait_for_webhooks(&ALL).await;
    let readiness = cluster
        .get_json(cluster.replicas[0].port, "/readyz")
        .await
        .expect("a replica answers /readyz");
    assert_eq!(readiness["store"]["backend"], "nats", "{readiness}");
    assert_eq!(readiness["store"]["connected"], true, "{readiness}");
    // Slow acks keep records in flight, so each kill lands mid-drain.
    cluster.rig.engine.set_faults(EngineFaults {
        ack_delay: std::time::Duration::from_millis(3),
        ..EngineFaults::default()
    });
    let first_wave = env_number("O365_SCALE_BLOBS", 60) as usize;
    let mut published = 0;
    while published < first_wave {
        let blobs = (first_wave - published).min(10);
        cluster.publish(blobs).await;
        published += blobs;
    }
    let total = cluster.rig.published().len() as u64;
    let ports: HashMap<String, u16> = cluster
        .replicas
        .iter()
        .map(|replica| (replica.id.clone(), replica.port))
        .collect();
    // Notifications are delivered in the background after publishing: wait for them.
    common::wait_until("notifications reached every replica", DEADLINE, || {
        ["r1", "r2", "r3"]
            .iter()
            .all(|id| cluster.answered_by(ports[*id]) > 0)
    })
    .await;

    // A replica that does not lead dies mid-drain.
    cluster
        .rig
        .engine
        .wait_for(DEADLINE, |counts| counts.logs_received >= total / 4)
        .await
        .unwrap();
    let leader = cluster.leader().await;
    let victim = ["r1", "r2", "r3"]
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    cluster.kill(victim).await;
    println!(
        "killed {victim} (not the leader, {leader}) after the engine received {} of {total} records",
        cluster.rig.engine.counts().logs_received
    );

    // Then the leader dies mid-drain.
    cluster
        .rig
        .engine
        .wait_for(DEADLINE, |counts| counts.logs_received >= total / 2)
        .await
        .unwrap();
    cluster.kill(&leader).await;
    println!(
        "killed the leader {leader} after the engine received {} of {total} records",
        cluster.rig.engine.counts().logs_received
    );

    // A replica joins without restarting the others, and more content arrives.
    cluster.start_replica("r4").await;
    let survivor_leader = cluster.leader().await;
    assert_ne!(survivor_leader, leader);
    assert_ne!(survivor_leader, victim);
    for _ in 0..4 {
        cluster.publish(10).await;
    }
    cluster.rig.engine.set_faults(EngineFaults::default());
    cluster.rig.wait_for_every_published_record().await;
    let total = cluster.rig.published().len() as u64;
    let received = cluster.rig.engine.counts().logs_received;
    println!(
        "published {total}, received {received}: 0 lost, {} duplicates after killing {victim} and the leader {leader}; notifications answered by replica: {:?}",
        received - total,
        cluster.proxy.answered.lock().unwrap()
    );
    let late = cluster.replicas[3].port;
    let late_acked = cluster.records_acked_by(late).await;
    println!(
        "the late replica r4 answered {} webhook calls and forwarded {late_acked} records",
        cluster.answered_by(late)
    );
    assert!(
        cluster.answered_by(late) > 0,
        "the late replica takes webhook calls"
    );
    assert!(late_acked > 0, "the late replica takes queued work");

    // One poller at a time: in time order, the replicas calling the leader-only endpoints
    // form runs, and a replica never comes back after another took over.
    let requests = cluster.rig.api.state().inspection().requests.clone();
    let mut leader_calls: Vec<_> = requests
        .iter()
        .filter(|request| {
            LEADER_ENDPOINTS
                .iter()
                .any(|endpoint| request.endpoint.ends_with(endpoint))
        })
        .map(|request| {
            (
                request.time,
                replica_of(request.user_agent.as_deref()).expect("a replica id in the User-Agent"),
            )
        })
        .collect();
    leader_calls.sort();
    let mut runs: Vec<(
        String,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = Vec::new();
    for (time, replica) in leader_calls {
        match runs.last_mut() {
            Some((current, _, last)) if *current == replica => *last = time,
            _ => runs.push((replica, time, time)),
        }
    }
    for (replica, first, last) in &runs {
        println!("leader calls by {replica}: {first} .. {last}");
    }
    let order: Vec<&str> = runs
        .iter()
        .map(|(replica, _, _)| replica.as_str())
        .collect();
    let mut distinct = order.clone();
    distinct.dedup();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        order.len(),
        "a replica polled again after another took over: {order:?}"
    );
    assert_eq!(order.first(), Some(&leader.as_str()));
    assert_eq!(order.last(), Some(&survivor_leader.as_str()));
    assert!(!order.contains(&victim), "{victim} never led: {order:?}");

    for replica in &mut cluster.replicas {
        if let Some(process) = replica.process.take() {
            assert_eq!(
                process.terminate().await,
                Some(0),
                "{} stops cleanly",
                replica.id
            );
        }
    }
    cluster.rig.shutdown().await;
}
