//! Certificate credentials: the app certificates of the scenario and the verification of
//! client assertions (RFC 7523 JWTs) against them.
//!
//! An assertion is accepted when, in this order:
//! 1. it parses as a JWT whose header `alg` is RS256 or PS256 (else AADSTS50027 or
//!    AADSTS5002738);
//! 2. its `x5t` (base64url SHA-1 of the DER certificate) and/or `x5t#S256` (base64url
//!    SHA-256) name the tenant's registered certificate (else AADSTS700027, key not found);
//! 3. its signature verifies with that certificate's RSA public key (else AADSTS700027,
//!    failed signature validation);
//! 4. `iss` = `sub` = the client id (else AADSTS700021);
//! 5. `aud` = the token URL the request was posted to (else AADSTS700023, Entra's
//!    "client assertion audience claim does not match Realm issuer");
//! 6. `exp` is in the future and `nbf` (when present) not in the future, by the emulator's
//!    clock with five minutes of skew (else AADSTS700024).

use std::path::Path;

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_parser::public_key::PublicKey;

use super::aadsts::{AadstsError, printable};

/// The `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew tolerated on `exp` and `nbf`, in seconds (Entra allows five minutes).
const SKEW_SECS: i64 = 300;

/// An app certificate that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The file could not be read.
    #[error("cannot read certificate {path}: {source}")]
    Read {
        /// The certificate file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file holds no parsable PEM X.509 certificate.
    #[error("certificate {path} is not a PEM X.509 certificate: {reason}")]
    Parse {
        /// The certificate file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// The certificate's key is not RSA.
    #[error("certificate {path} does not hold an RSA public key")]
    NotRsa {
        /// The certificate file.
        path: String,
    },
}

/// A registered app certificate: its RSA public key and thumbprints.
#[derive(Clone)]
pub struct AppCertificate {
    key: DecodingKey,
    /// Base64url (unpadded) SHA-1 of the DER certificate, as in an `x5t` header.
    pub thumbprint_sha1: String,
    /// Base64url (unpadded) SHA-256 of the DER certificate, as in an `x5t#S256` header.
    pub thumbprint_sha256: String,
}

impl std::fmt::Debug for AppCertificate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AppCertificate")
            .field("thumbprint_sha1", &self.thumbprint_sha1)
            .field("thumbprint_sha256", &self.thumbprint_sha256)
            .finish_non_exhaustive()
    }
}

impl AppCertificate {
    /// Reads the first certificate of a PEM file.
    pub fn load(path: &Path) -> Result<Self, CertificateError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| CertificateError::Read {
            path: name.clone(),
            source,
        })?;
        Self::from_pem(&bytes).map_err(|error| match error {
            CertificateError::Parse { reason, .. } => {
                CertificateError::Parse { path: name, reason }
            }
            CertificateError::NotRsa { .. } => CertificateError::NotRsa { path: name },
            other => other,
        })
    }

    /// Parses the first certificate of PEM text (paths in errors are left empty).
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertificateError> {
        let parse_error = |reason: String| CertificateError::Parse {
            path: String::new(),
            reason,
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
            .map_err(|error| parse_error(error.to_string()))?;
        let certificate = pem
            .parse_x509()
            .map_err(|error| parse_error(error.to_string()))?;
        let key = match certificate.public_key().parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                DecodingKey::from_rsa_raw_components(rsa.modulus, rsa.exponent)
            }
            _ => {
                return Err(CertificateError::NotRsa {
                    path: String::new(),
                });
            }
        };
        Ok(Self {
            key,
            thumbprint_sha1: URL_SAFE_NO_PAD.encode(Sha1::digest(&pem.contents)),
            thumbprint_sha256: URL_SAFE_NO_PAD.encode(Sha256::digest(&pem.contents)),
        })
    }
}

/// What a client assertion must match.
#[derive(Clone, Copy, Debug)]
pub struct AssertionExpectation<'a> {
    /// The client id of the request (`iss` and `sub`).
    pub client_id: &'a str,
    /// The token URL posted to (`aud`).
    pub token_url: &'a str,
    /// Now, seconds since the epoch, by the emulator's clock.
    pub now: i64,
}

/// The claims of a client assertion that the emulator checks.
#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<serde_json::Value>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// Verifies a client assertion against the tenant's certificate (see the module doc for
/// the order of checks and their codes).
pub fn verify_client_assertion(
    certificate: Option<&AppCertificate>,
    assertion: &str,
    expected: &AssertionExpectation<'_>,
) -> Result<(), AadstsError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed())?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::PS256) {
        return Err(AadstsError::invalid_request(
            5002738,
            "assertion_unsupported_algorithm",
            format!(
                "Invalid JWT token. '{:?}' is not a supported signature algorithm. \
                 Supported signing algorithms are: 'RS256, PS256'",
                header.alg
            ),
        ));
    }
    let certificate = certificate
        .filter(|certificate| thumbprints_match(certificate, &header))
        .ok_or_else(|| key_not_found(&header))?;
    let claims = verify_signature(certificate, assertion, header.alg)?;
    check_claims(&claims, expected)
}

/// True when the header names this certificate by at least one thumbprint and no
/// thumbprint it gives names another.
fn thumbprints_match(certificate: &AppCertificate, header: &jsonwebtoken::Header) -> bool {
    let sha1 = header.x5t.as_deref();
    let sha256 = header.x5t_s256.as_deref();
    if sha1.is_none() && sha256.is_none() {
        return false;
    }
    sha1.is_none_or(|value| value == certificate.thumbprint_sha1)
        && sha256.is_none_or(|value| value == certificate.thumbprint_sha256)
}

fn verify_signature(
    certificate: &AppCertificate,
    assertion: &str,
    algorithm: Algorithm,
) -> Result<AssertionClaims, AadstsError> {
    let mut validation = Validation::new(algorithm);
    // Time, audience and issuer are judged by check_claims, with the emulator's clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    match jsonwebtoken::decode::<AssertionClaims>(assertion, &certificate.key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(error) => match error.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidRsaKey(_) => {
                Err(AadstsError::invalid_client(
                    700027,
                    "assertion_bad_signature",
                    "Client assertion failed signature validation.",
                ))
            }
            _ => Err(malformed()),
        },
    }
}

fn check_claims(
    claims: &AssertionClaims,
    expected: &AssertionExpectation<'_>,
) -> Result<(), AadstsError> {
    let names_client = |value: &Option<String>| {
        value
            .as_deref()
            .is_some_and(|id| id.eq_ignore_ascii_case(expected.client_id))
    };
    if !names_client(&claims.iss) || !names_client(&claims.sub) {
        return Err(AadstsError::invalid_client(
            700021,
            "assertion_wrong_issuer",
            "Client assertion application identifier doesn't match 'client_id' parameter. \
             Review the documentation at \
             https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
        ));
    }
    if !audience_is(claims.aud.as_ref(), expected.token_url) {
        return Err(AadstsError::invalid_client(
            700023,
            "assertion_wrong_audience",
            "Client assertion audience claim does not match Realm issuer. Review the \
             documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
        ));
    }
    let Some(expiry) = claims.exp else {
        return Err(malformed());
    };
    let expired = expected.now > expiry.saturating_add(SKEW_SECS);
    let early = claims
        .nbf
        .is_some_and(|not_before| not_before > expected.now.saturating_add(SKEW_SECS));
    if expired || early {
        return Err(AadstsError::invalid_client(
            700024,
            "assertion_out_of_time_range",
            format!(
                "Client assertion is not within its valid time range. Current time: {}, \
                 assertion valid from {}, expiry time of assertion {}. Review the \
                 documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                format_time(expected.now),
                claims.nbf.map(format_time).unwrap_or_default(),
                format_time(expiry)
            ),
        ));
    }
    Ok(())
}

/// `aud` is the token URL, as a string or a one-element array.
fn audience_is(audience: Option<&serde_json::Value>, token_url: &str) -> bool {
    match audience {
        Some(serde_json::Value::String(value)) => value == token_url,
        Some(serde_json::Value::Array(values)) => {
            values.len() == 1 && values[0].as_str() == Some(token_url)
        }
        _ => false,
    }
}

fn format_time(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        // Entra prints seven fractional digits; assertion times are whole seconds.
        .map(|time| format!("{}.0000000Z", time.format("%Y-%m-%dT%H:%M:%S")))
        .unwrap_or_else(|| seconds.to_string())
}

fn malformed() -> AadstsError {
    AadstsError::invalid_request(
        50027,
        "assertion_malformed",
        "JWT token is invalid or malformed.",
    )
}

fn key_not_found(header: &jsonwebtoken::Header) -> AadstsError {
    AadstsError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700027,
        "assertion_unknown_certificate",
        format!(
            "The certificate with identifier used to sign the client assertion is not \
             registered on application. [Reason - The key was not found., Thumbprint of key \
             used by client: '{}']",
            printable(
                header
                    .x5t_s256
                    .as_deref()
                    .or(header.x5t.as_deref())
                    .unwrap_or("")
            )
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_match_openssl_fingerprints_of_the_fixture() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app-cert/app.pem");
        let certificate = AppCertificate::load(&path).unwrap();
        // `openssl x509 -noout -fingerprint -sha1` / `-sha256` of the same file.
        let sha1 = hex::decode("142F0B79DAFA538DA56BCC305B5B400B960F8090").unwrap();
        let sha256 =
            hex::decode("75850C39DE095261393ADB7BFD49E0E3D865E7505964FC3599B72D3BD6EF2317")
                .unwrap();
        assert_eq!(certificate.thumbprint_sha1, URL_SAFE_NO_PAD.encode(sha1));
        assert_eq!(
            certificate.thumbprint_sha256,
            URL_SAFE_NO_PAD.encode(sha256)
        );
    }

    #[test]
    fn a_key_is_not_a_certificate() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app-cert/app-key.pem");
        let error = AppCertificate::load(&path).unwrap_err();
        assert!(error.to_string().contains("app-key.pem"), "{error}");
    }
}
