//! The HTTP(S) listeners' edge: loading a certificate and key into a rustls server
//! configuration (TLS 1.2 and 1.3 only, ring provider, optional client certificates),
//! reloading it in place ([`tls_reload`]), deciding who the client is behind a reverse
//! proxy and which sources may call the webhook ([`proxy`]), and generating the
//! development certificates that the emulators, the demo and the tests use for real TLS;
//! counting, capping and timing out the listeners' connections ([`connections`]).

pub mod connections;
pub mod dev_certs;
pub mod proxy;
pub mod tls_reload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key file that could not be used. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or holds no PEM object of the expected kind.
    #[error("cannot read {what} from {path}: {reason}")]
    Pem {
        /// What was expected: "certificate" or "private key".
        what: &'static str,
        /// The file that was read.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("certificate {cert} and key {key} do not form a usable pair: {reason}")]
    Config {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
        /// Why rustls refused it.
        reason: String,
    },
}

/// The crypto provider of every TLS endpoint of this crate (ring: pure Rust and assembly,
/// no C toolchain needed).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (leaf first, then intermediates).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |reason: String| TlsError::Pem {
        what: "certificate",
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The protocol versions every TLS listener of this crate offers: 1.3 and 1.2, never 1.1
/// or older (rustls does not implement them at all).
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Builds a rustls server configuration from a PEM certificate chain and key, offering
/// TLS 1.2 and 1.3 only, with ALPN for HTTP/2 and HTTP/1.1.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    server_config_with_client_ca(cert, key, None)
}

/// As [`server_config`]; with `client_ca`, every client must present a certificate that
/// chains to one of the PEM certificates of that file (the handshake fails otherwise).
pub fn server_config_with_client_ca(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let chain = read_certificates(cert)?;
    let private_key = read_private_key(key)?;
    let config_error = |reason: String| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason,
    };
    let builder = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| config_error(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => builder.with_client_cert_verifier(client_verifier(client_ca)?),
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|e| config_error(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A verifier requiring a client certificate issued by a CA of `client_ca`.
fn client_verifier(
    client_ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let ca_error = |reason: String| TlsError::Pem {
        what: "client CA certificate",
        path: client_ca.to_path_buf(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in read_certificates(client_ca)? {
        roots
            .add(certificate)
            .map_err(|e| ca_error(e.to_string()))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .build()
        .map_err(|e| ca_error(e.to_string()))
}
