//! Webhook ingest: notification POSTs (one item each) answered 200 after a durable enqueue,
//! under 64 concurrent connections on loopback, against the limit measured in the same run:
//! a bare axum handler answering 200 under the same generator. Also reports the store
//! disk's fsyncs per second. One JSON line per figure:
//! `{"scenario","metric","value","unit","limit","ratio","target","op","met"}`.
//!
//! Run: `cargo bench --bench webhook_ingest` (release). `WEBHOOK_BENCH_POSTS` sets the
//! number of POSTs per measurement (default 20,000).

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use o365_connector::clock::Clock;
use o365_connector::config::ContentType;
use o365_connector::ops::Metrics;
use o365_connector::queue::{ContentQueue, EmbeddedQueue};
use o365_connector::webhook::{self, WebhookSecrets, WebhookState, WebhookTenant};
use reqwest::Url;
use serde_json::json;

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const CONNECTIONS: usize = 64;

struct Run {
    posts_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn figure(metric: &str, value: f64, unit: &str, limit: Option<f64>) {
    let ratio = limit.map(|limit| value / limit);
    println!(
        "{}",
        json!({"scenario": "webhook_ingest", "metric": metric, "value": value, "unit": unit,
               "limit": limit, "ratio": ratio, "target": null, "op": null, "met": null})
    );
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// `posts` POSTs of one notification item each, `CONNECTIONS` at a time.
async fn load(url: String, auth_id: String, posts: usize, offset: usize) -> Run {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, url, auth_id, next) = (client.clone(), url.clone(), auth_id.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= posts {
                        return latencies;
                    }
                    let content_id = format!("bench-{}", n + offset);
                    let body = json!([{
                        "tenantId": TENANT, "clientId": CLIENT, "contentType": "Audit.Exchange",
                        "contentId": content_id,
                        "contentUri": format!("https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/{content_id}"),
                        "contentCreated": "2026-01-10T12:00:00.000Z", "contentExpiration": "2026-01-17T12:00:00.000Z"
                    }]);
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("Content-Type", "application/json; utf-8")
                        .header("Webhook-AuthID", &auth_id)
                        .body(body.to_string())
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
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    Run {
        posts_per_s: posts as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    }
}

/// 4 KiB writes each followed by fdatasync, for one second.
fn fsyncs_per_second(dir: &std::path::Path) -> f64 {
    let mut file = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let block = [0u8; 4096];
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let posts: usize = std::env::var("WEBHOOK_BENCH_POSTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The store lives under target/ on the machine's disk, not in a tmpfs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    runtime.block_on(async {
        let bare = serve(Router::new().route("/hook/{tenant}", post(|| async { "ok" }))).await;
        let limit = load(format!("{bare}/hook/{TENANT}"), String::new(), posts, 0).await;

        let queue = Arc::new(
            EmbeddedQueue::open(dir.path(), Clock::system())
                .await
                .unwrap(),
        );
        let tenant = WebhookTenant {
            tenant_id: TENANT.into(),
            client_id: CLIENT.into(),
            content_types: HashSet::from([ContentType::AuditExchange]),
            api_base: Url::parse("https://manage.office.com").unwrap(),
        };
        let secrets = WebhookSecrets::new(b"bench secret".to_vec(), None);
        let auth_id = secrets.auth_id(TENANT);
        let state = Arc::new(WebhookState::new(
            [tenant],
            secrets,
            queue.clone() as Arc<dyn ContentQueue>,
            webhook::DEFAULT_MAX_BODY_BYTES,
            Arc::new(Metrics::default()),
            Arc::new(tokio::sync::Notify::new()),
        ));
        let url = serve(webhook::router(state, "/hook")).await;
        let run = load(format!("{url}/hook/{TENANT}"), auth_id, posts, 0).await;
        let stats = queue.stats().await.unwrap();
        assert_eq!(
            stats.pending, posts as u64,
            "every POST answered 200 is on disk"
        );

        figure(
            "items_per_s",
            run.posts_per_s,
            "items/s",
            Some(limit.posts_per_s),
        );
        figure(
            "posts_per_s",
            run.posts_per_s,
            "posts/s",
            Some(limit.posts_per_s),
        );
        figure("latency_p50", run.p50_ms, "ms", Some(limit.p50_ms));
        figure("latency_p99", run.p99_ms, "ms", Some(limit.p99_ms));
        figure(
            "items_per_commit",
            stats.write_requests as f64 / stats.commits.max(1) as f64,
            "items/commit",
            None,
        );
        queue.close().await.unwrap();
    });
    figure(
        "disk_fsyncs_per_s",
        fsyncs_per_second(dir.path()),
        "fsyncs/s",
        None,
    );
}
