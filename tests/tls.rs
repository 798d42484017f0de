//! The webhook listener's edge: TLS versions, certificate reload on file change and on
//! SIGHUP (open connections keep working), `X-Forwarded-For` from trusted proxies only,
//! the webhook source allowlist, and required client certificates.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::rig::{Rig, RigOptions, SECRET};
use common::{DEADLINE, start_binary_with_env};
use o365_connector::emulator::api::scenario::FaultScenario;
use o365_connector::server::dev_certs::{DevCertPaths, write_dev_certs};
use o365_connector::server::read_certificates;
use o365_connector::server::tls_reload::{CertificateReloader, TlsFiles};

/// A rig whose service is not started yet, polling only (no webhook registration), with
/// `server_lines` added to `[server]`.
async fn rig_with_server_lines(dir: tempfile::TempDir, server_lines: &str) -> Rig {
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.webhook = false;
    options.in_process = false;
    let mut rig = Rig::start(dir, options).await;
    rig.config_text =
        rig.config_text
            .replacen("\n[store]", &format!("{server_lines}\n\n[store]"), 1);
    rig
}

/// Copies the rig's server pair to `serving/` and points `tls_cert`/`tls_key` at the
/// copies, so a test can replace them without touching the emulator's.
fn serve_from_copies(rig: &mut Rig) -> DevCertPaths {
    let serving = rig.dir.path().join("serving");
    std::fs::create_dir_all(&serving).unwrap();
    let copies = DevCertPaths::in_dir(&serving);
    std::fs::copy(&rig.certs.server_cert, &copies.server_cert).unwrap();
    std::fs::copy(&rig.certs.server_key, &copies.server_key).unwrap();
    std::fs::copy(&rig.certs.ca, &copies.ca).unwrap();
    for (original, copy) in [
        (&rig.certs.server_cert, &copies.server_cert),
        (&rig.certs.server_key, &copies.server_key),
    ] {
        rig.config_text = rig.config_text.replace(
            &format!("\"{}\"", original.display()),
            &format!("\"{}\"", copy.display()),
        );
    }
    copies
}

/// Another development certificate set, with its own CA.
fn other_certs(dir: &Path, name: &str) -> DevCertPaths {
    write_dev_certs(&dir.join(name), false).unwrap().0
}

/// Replaces `target`'s pair with `source`'s the way certbot or a Kubernetes secret
/// volume does: write beside, then rename over (certificate first, then key).
fn replace_pair(source: &DevCertPaths, target: &DevCertPaths) {
    for (from, to) in [
        (&source.server_cert, &target.server_cert),
        (&source.server_key, &target.server_key),
    ] {
        let temporary = to.with_extension("new");
        std::fs::copy(from, &temporary).unwrap();
        std::fs::rename(&temporary, to).unwrap();
    }
}

fn certificate_der(path: &Path) -> Vec<u8> {
    read_certificates(path).unwrap()[0].to_vec()
}

fn client_builder(cas: &[&Path]) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder().use_rustls_tls().tls_info(true);
    for ca in cas {
        let pem = std::fs::read(ca).unwrap();
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    builder
}

/// The leaf certificate a response came over.
fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the response carries TLS info")
        .to_vec()
}

/// The certificate a brand-new connection is served.
async fn served_on_new_connection(url: &str, cas: &[&Path]) -> Vec<u8> {
    let client = client_builder(cas)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    peer_certificate(&response)
}

async fn wait_for_served(url: &str, cas: &[&Path], expected: &[u8], what: &str) {
    let started = Instant::now();
    while served_on_new_connection(url, cas).await != expected {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client holding one open connection (HTTP/2 over the first certificate).
async fn open_connection(url: &str, ca: &Path) -> reqwest::Client {
    let client = client_builder(&[ca]).build().unwrap();
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    client
}

/// The open connection still answers, and it is the old one: the new certificate's CA is
/// not trusted by this client, so only the connection made before the reload can succeed.
async fn assert_connection_still_served(client: &reqwest::Client, url: &str, old: &[u8]) {
    let response = client
        .get(url)
        .send()
        .await
        .expect("the connection opened before the reload still works");
    assert_eq!(response.status(), 200);
    assert_eq!(peer_certificate(&response), old);
}

#[tokio::test]
async fn certificate_replaced_on_disk_is_served_without_restart_and_open_connections_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = rig_with_server_lines(dir, "tls_watch_interval_secs = 1").await;
    let serving = serve_from_copies(&mut rig);
    let replacement = other_certs(rig.dir.path(), "replacement");
    rig.start_service(None).await;
    let url = format!("{}/healthz", rig.service.as_ref().unwrap().base_url);
    let both = [serving.ca.as_path(), replacement.ca.as_path()];
    let old = certificate_der(&serving.server_cert);
    assert_eq!(served_on_new_connection(&url, &both).await, old);
    let open = open_connection(&url, &serving.ca).await;

    replace_pair(&replacement, &serving);
    let new = certificate_der(&replacement.server_cert);
    wait_for_served(&url, &both, &new, "the replaced certificate").await;
    assert_connection_still_served(&open, &url, &old).await;
    rig.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    // File watching effectively off: only the signal can cause the reload.
    let mut rig = rig_with_server_lines(dir, "tls_watch_interval_secs = 86400").await;
    let serving = serve_from_copies(&mut rig);
    let replacement = other_certs(rig.dir.path(), "replacement");
    let config = rig.write_config();
    let binary = start_binary_with_env(
        &["run", "--config", config.to_str().unwrap()],
        &[("RIG_SECRET", SECRET)],
    )
    .await;
    let base_url = binary
        .ready_line
        .strip_prefix("listening ")
        .expect("the readiness line names the URL")
        .to_string();
    let url = format!("{base_url}/healthz");
    let both = [serving.ca.as_path(), replacement.ca.as_path()];
    let old = certificate_der(&serving.server_cert);
    let open = open_connection(&url, &serving.ca).await;

    replace_pair(&replacement, &serving);
    assert_eq!(
        served_on_new_connection(&url, &both).await,
        old,
        "no reload before the signal"
    );
    let pid = binary.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let new = certificate_der(&replacement.server_cert);
    wait_for_served(&url, &both, &new, "the certificate reloaded on SIGHUP").await;
    assert_connection_still_served(&open, &url, &old).await;
    assert_eq!(binary.terminate().await, Some(0), "SIGHUP did not stop it");
    rig.shutdown().await;
}

#[tokio::test]
async fn a_failed_reload_keeps_serving_the_previous_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = other_certs(dir.path(), "first");
    let second = other_certs(dir.path(), "second");
    let serving = other_certs(dir.path(), "serving");
    let reloader = CertificateReloader::load(TlsFiles {
        cert: serving.server_cert.clone(),
        key: serving.server_key.clone(),
        client_ca: None,
    })
    .unwrap();
    let before = reloader.rustls_config().get_inner();
    // A certificate whose key is not beside it: rustls refuses the pair.
    std::fs::copy(&first.server_cert, &serving.server_cert).unwrap();
    std::fs::copy(&second.server_key, &serving.server_key).unwrap();
    let error = reloader.reload().await.unwrap_err().to_string();
    assert!(error.contains("do not form a usable pair"), "{error}");
    assert!(std::sync::Arc::ptr_eq(
        &before,
        &reloader.rustls_config().get_inner()
    ));
    std::fs::copy(&first.server_key, &serving.server_key).unwrap();
    reloader.reload().await.unwrap();
    assert!(!std::sync::Arc::ptr_eq(
        &before,
        &reloader.rustls_config().get_inner()
    ));
}

/// A TLS 1.1 ClientHello (client_version 3.2, one TLS 1.0/1.1 cipher suite, no
/// extensions): what a client limited to TLS 1.1 or older sends.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_are_spoken() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = rig_with_server_lines(dir, "").await;
    rig.start_service(None).await;
    let service = rig.service.as_ref().unwrap();
    let url = format!("{}/healthz", service.base_url);
    for version in [
        reqwest::tls::Version::TLS_1_2,
        reqwest::tls::Version::TLS_1_3,
    ] {
        let client = client_builder(&[&rig.certs.ca])
            .min_tls_version(version)
            .max_tls_version(version)
            .build()
            .unwrap();
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{version:?}");
    }
    let address = service.address;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(&tls11_client_hello()).unwrap();
        let mut answer = [0u8; 7];
        stream.read_exact(&mut answer).map(|_| answer)
    })
    .await
    .unwrap();
    // rustls answers with a fatal alert (content type 21) and never a ServerHello (22).
    let answer = answer.expect("the server answers the hello");
    assert_eq!(
        answer[0], 21,
        "an alert record, not a handshake: {answer:?}"
    );
    assert_eq!(answer[5], 2, "a fatal alert: {answer:?}");
    rig.shutdown().await;
}

/// Status of a webhook POST (without authId) from 127.0.0.1 with `forwarded_for`.
async fn webhook_status(rig: &Rig, forwarded_for: Option<&str>) -> u16 {
    let service = rig.service.as_ref().unwrap();
    let client = client_builder(&[&rig.certs.ca]).build().unwrap();
    let mut request = client
        .post(format!("{}/{}", service.base_url, common::rig::TENANT))
        .header("content-type", "application/json")
        .body("[]");
    if let Some(forwarded_for) = forwarded_for {
        request = request.header("x-forwarded-for", forwarded_for);
    }
    request.send().await.unwrap().status().as_u16()
}

fn forbidden_count(rig: &Rig) -> u64 {
    let text = rig.service.as_ref().unwrap().metrics.encode();
    common::metric_value(
        &text,
        "o365_connector_notifications_total{outcome=\"forbidden_source\"}",
    )
    .map_or(0, |value| value as u64)
}

#[tokio::test]
async fn allowlist_refuses_other_sources_and_forwarded_for_counts_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = rig_with_server_lines(
        dir,
        "trusted_proxies = [\"127.0.0.1\"]\nwebhook_allowed_networks = [\"203.0.113.0/24\", \"2603:1000::/25\"]",
    )
    .await;
    rig.start_service(None).await;
    // Through the trusted proxy from an allowed network: past the allowlist, on to the
    // authId check.
    assert_eq!(webhook_status(&rig, Some("203.0.113.5")).await, 401);
    // A forged entry before the real client does not help.
    assert_eq!(
        webhook_status(&rig, Some("203.0.113.5, 198.51.100.1")).await,
        403
    );
    // The proxy itself is not in the allowlist.
    assert_eq!(webhook_status(&rig, None).await, 403);
    assert_eq!(forbidden_count(&rig), 2);
    let client = client_builder(&[&rig.certs.ca]).build().unwrap();
    let health = client
        .get(format!(
            "{}/healthz",
            rig.service.as_ref().unwrap().base_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        200,
        "the allowlist guards the webhook only"
    );
    rig.stop_service().await;

    // The same request from a peer that is not a trusted proxy: its header is ignored.
    rig.config_text = rig
        .config_text
        .replace("trusted_proxies = [\"127.0.0.1\"]", "trusted_proxies = []");
    rig.start_service(None).await;
    assert_eq!(webhook_status(&rig, Some("203.0.113.5")).await, 403);
    rig.shutdown().await;
}

#[tokio::test]
async fn client_certificate_is_required_when_client_ca_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let clients = other_certs(dir.path(), "clients");
    let strangers = other_certs(dir.path(), "strangers");
    let mut rig =
        rig_with_server_lines(dir, &format!("client_ca = \"{}\"", clients.ca.display())).await;
    rig.start_service(None).await;
    let url = format!("{}/healthz", rig.service.as_ref().unwrap().base_url);
    let identity = |paths: &DevCertPaths| -> reqwest::Identity {
        let mut pem = std::fs::read(&paths.server_cert).unwrap();
        pem.extend(std::fs::read(&paths.server_key).unwrap());
        reqwest::Identity::from_pem(&pem).unwrap()
    };
    let with = |identity: Option<reqwest::Identity>| {
        let mut builder = client_builder(&[&rig.certs.ca]);
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        builder.build().unwrap()
    };
    let accepted = with(Some(identity(&clients))).get(&url).send().await;
    assert_eq!(accepted.unwrap().status(), 200);
    assert!(
        with(None).get(&url).send().await.is_err(),
        "no client certificate"
    );
    assert!(
        with(Some(identity(&strangers)))
            .get(&url)
            .send()
            .await
            .is_err(),
        "a client certificate from another CA"
    );
    rig.shutdown().await;
}
