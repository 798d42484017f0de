//! `certs dev` writes a CA and a localhost server pair that a rustls server and a rustls
//! client (reqwest) accept over real TLS, for both `localhost` and `127.0.0.1`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use o365_connector::server::{dev_certs::DevCertPaths, server_config};

async fn serve_tls(
    paths: &DevCertPaths,
) -> (
    std::net::SocketAddr,
    axum_server::Handle<std::net::SocketAddr>,
) {
    let config = server_config(&paths.server_cert, &paths.server_key).expect("the pair loads");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let handle = axum_server::Handle::new();
    let app = Router::new().route("/", get(|| async { "hello over tls" }));
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
    )
    .unwrap()
    .handle(handle.clone());
    tokio::spawn(server.serve(app.into_make_service()));
    (address, handle)
}

fn client_trusting(ca: Option<&std::path::Path>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap();
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn certs_dev_pair_is_accepted_by_rustls_server_and_client_for_localhost_and_ip() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs/dev");
    let output = tokio::process::Command::new(common::binary())
        .args(["certs", "dev", "--dir", certs_dir.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let paths = DevCertPaths::in_dir(&certs_dir);
    let key_mode = std::fs::metadata(&paths.server_key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        key_mode & 0o777,
        0o600,
        "the private key is readable by its owner only"
    );

    let (address, handle) = serve_tls(&paths).await;
    let trusting = client_trusting(Some(&paths.ca));
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{}/", address.port());
        let body = trusting
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "hello over tls", "{host}");
    }
    let untrusting = client_trusting(None);
    let refused = untrusting
        .get(format!("https://localhost:{}/", address.port()))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "without the dev CA the certificate is not trusted"
    );
    handle.shutdown();
}

#[tokio::test]
async fn certs_dev_keeps_an_existing_set_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let run = |force: bool| {
        let mut args = vec!["certs", "dev", "--dir", dir.path().to_str().unwrap()];
        if force {
            args.push("--force");
        }
        let output = std::process::Command::new(common::binary())
            .args(&args)
            .output()
            .unwrap();
        assert!(output.status.success());
        std::fs::read(dir.path().join("ca.pem")).unwrap()
    };
    let first = run(false);
    assert_eq!(
        run(false),
        first,
        "a second run keeps the CA clients already trust"
    );
    assert_ne!(run(true), first, "--force makes a new CA");
}
