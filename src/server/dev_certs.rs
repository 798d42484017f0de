//! Development certificates: a local CA and a server certificate for `localhost` and
//! `127.0.0.1`, signed by it.
//!
//! `o365-connector certs dev` writes `ca.pem`, `server.pem` and `server-key.pem` into a
//! directory (default `certs/dev/`, git-ignored). Clients trust `ca.pem`; servers present
//! `server.pem` with `server-key.pem` (written with mode 0600). The CA's own key is never
//! written, so the CA cannot sign anything else. Existing files are kept unless `force`
//! is set, so a running emulator's trust is not pulled from under it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// File name of the development CA certificate.
pub const CA_FILE: &str = "ca.pem";
/// File name of the server certificate.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// File name of the server private key.
pub const SERVER_KEY_FILE: &str = "server-key.pem";

/// Paths of a written development certificate set.
#[derive(Clone, Debug)]
pub struct DevCertPaths {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server certificate (for `localhost` and `127.0.0.1`).
    pub server_cert: PathBuf,
    /// The server private key.
    pub server_key: PathBuf,
}

impl DevCertPaths {
    /// The three paths inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join(CA_FILE),
            server_cert: dir.join(SERVER_CERT_FILE),
            server_key: dir.join(SERVER_KEY_FILE),
        }
    }

    fn all_exist(&self) -> bool {
        [&self.ca, &self.server_cert, &self.server_key]
            .iter()
            .all(|path| path.is_file())
    }
}

/// Why development certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    /// Certificate generation failed.
    #[error("cannot generate the development certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file or the directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// What [`write_dev_certs`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevCertOutcome {
    /// New files were generated.
    Generated,
    /// All three files already existed and were kept.
    Kept,
}

/// Writes the development CA and server certificate into `dir`, creating it. Keeps an
/// existing complete set unless `force` is true.
pub fn write_dev_certs(
    dir: &Path,
    force: bool,
) -> Result<(DevCertPaths, DevCertOutcome), DevCertError> {
    let paths = DevCertPaths::in_dir(dir);
    if !force && paths.all_exist() {
        return Ok((paths, DevCertOutcome::Kept));
    }
    let (ca_pem, server_pem, server_key_pem) = generate()?;
    fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&paths.ca, ca_pem.as_bytes(), 0o644)?;
    write_file(&paths.server_cert, server_pem.as_bytes(), 0o644)?;
    write_file(&paths.server_key, server_key_pem.as_bytes(), 0o600)?;
    Ok((paths, DevCertOutcome::Generated))
}

/// Generates (CA certificate, server certificate, server key), all PEM.
fn generate() -> Result<(String, String, String), rcgen::Error> {
    let now = time::OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "o365-connector development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(825);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    // "127.0.0.1" parses as an IP address, so rcgen makes it an IP SAN.
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server_params.is_ca = IsCa::ExplicitNoCa;
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    server_params.not_before = now - time::Duration::hours(1);
    server_params.not_after = now + time::Duration::days(365);
    let server_key = KeyPair::generate()?;
    let server_cert = server_params.signed_by(&server_key, &ca)?;
    Ok((ca.pem(), server_cert.pem(), server_key.serialize_pem()))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), DevCertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let write_error = |source| DevCertError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Write beside the target and rename, so a reader never sees half a file.
    let temporary = path.with_extension("pem.tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    fs::rename(&temporary, path).map_err(write_error)
}
