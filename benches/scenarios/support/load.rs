//! The webhook load generator: single-item notifications POSTed over concurrent connections,
//! with their latencies; and one connector instance measured under it ([`ingest`]), on
//! whichever store, for `webhook_ingest` and `scale_out`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;
use serde_json::json;

pub struct LoadRun {
    pub posts_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub fn notification(base: &str, content_id: &str) -> String {
    json!([{
        "tenantId": TENANT, "clientId": CLIENT, "contentType": "Audit.General",
        "contentId": content_id,
        "contentUri": format!("{base}/api/v1.0/{TENANT}/activity/feed/audit/{content_id}"),
        "contentCreated": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "contentExpiration": (chrono::Utc::now() + chrono::Duration::days(7))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }])
    .to_string()
}

/// `posts` POSTs of one notification item each over `connections` concurrent connections.
pub async fn load(
    url: &str,
    auth_id: &str,
    base: &str,
    posts: usize,
    connections: usize,
) -> LoadRun {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            let (url, auth_id, base) = (url.to_string(), auth_id.to_string(), base.to_string());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= posts {
                        return latencies;
                    }
                    let body = notification(&base, &format!("bench-{n}"));
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("Content-Type", "application/json; utf-8")
                        .header("Webhook-AuthID", &auth_id)
                        .body(body)
                        .send()
                        .await
                        .expect("the server answers");
                    assert_eq!(response.status(), 200);
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(posts);
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    let elapsed = started.elapsed();
    LoadRun {
        posts_per_s: posts as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile_ms(&mut latencies, 0.50),
        p99_ms: percentile_ms(&mut latencies, 0.99),
    }
}

/// What one connector instance did under the webhook load.
pub struct IngestRun {
    pub load: LoadRun,
    /// The connector's CPU time (user + system) over the load, in seconds.
    pub cpu_seconds: f64,
    /// Its peak resident set, in bytes.
    pub peak_rss: f64,
}

/// Starts one connector in `dir` with `store` (the `[store]` keys and appended TOML of
/// [`ConnectorSetup::store`]), loads it with `posts` single-item notifications over
/// `connections` connections (every one answered 200, i.e. durably enqueued), stops it. The
/// bench's build, or `binary` (another build, for a before/after run).
pub async fn ingest(
    dir: &std::path::Path,
    api_base: &str,
    socket: &std::path::Path,
    posts: usize,
    connections: usize,
    store: (&str, &str),
    binary: Option<&std::path::Path>,
) -> IngestRun {
    std::fs::create_dir_all(dir).unwrap();
    let setup = ConnectorSetup {
        dir,
        socket,
        api_base,
        // Microsoft's documented quota (the connector's default): what the workers may fetch
        // while the notifications arrive. An unlimited budget would have them lease, fetch
        // (the generated contentIds are not served: 404) and reschedule every item as it
        // lands, three extra store writes and an API round trip per item on the same two
        // cores, which no deployment does at this rate; their cost is `drain`'s measure.
        requests_per_minute: 2000,
        tenants: &[TENANT.to_string()],
        webhook: true,
        poller: IDLE_POLLER,
        store,
    };
    let connector = match binary {
        Some(binary) => Connector::start_binary(setup, binary).await,
        None => Connector::start(setup).await,
    };
    let auth_id =
        o365_connector::webhook::WebhookSecrets::new(WEBHOOK_SECRET.as_bytes().to_vec(), None)
            .auth_id(TENANT);
    let url = format!("{}/hook/{TENANT}", connector.listen);
    let cpu_before = connector.cpu_seconds();
    let load = load(&url, &auth_id, api_base, posts, connections).await;
    let run = IngestRun {
        load,
        cpu_seconds: connector.cpu_seconds() - cpu_before,
        peak_rss: connector.peak_rss(),
    };
    connector.stop();
    run
}

pub fn percentile_ms(values: &mut [Duration], p: f64) -> f64 {
    values.sort();
    values[((values.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3
}
