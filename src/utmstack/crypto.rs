//! UTMStack's encryption of secrets in its configuration files (spec utmstack-engine.md §5),
//! decryption only.
//!
//! Scheme: `salt = SHA1(key)`; `aesKey = PBKDF2-HMAC-SHA1(key, salt, 65536 iterations, 16
//! bytes)`; `IV = salt[0..16]`; AES-128-CBC with PKCS#5 padding; standard base64.
//!
//! The rule is the Go plugin's: a value that is base64 whose decoded length is a non-zero
//! multiple of 16 is decrypted; a value that is not, or whose padding is invalid after
//! decryption (or whose plaintext is not UTF-8), is used as it is, as plaintext. The caller
//! is told which, so it can warn; the value itself never leaves this module in an error.

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use secrecy::SecretString;
use sha1::{Digest, Sha1};

/// PBKDF2 iterations of the scheme.
const PBKDF2_ITERATIONS: u32 = 65_536;

/// AES-128 in CBC mode, decrypting.
type Aes128CbcDecryptor = cbc::Decryptor<aes::Aes128>;

/// The AES key and IV derived from UTMStack's encryption key.
pub struct DerivedKey {
    aes_key: [u8; 16],
    iv: [u8; 16],
}

impl DerivedKey {
    /// Derives the AES key and IV from the pipeline's `encryptionKey`.
    pub fn derive(encryption_key: &str) -> Self {
        let salt = Sha1::digest(encryption_key.as_bytes());
        let mut aes_key = [0u8; 16];
        pbkdf2::pbkdf2_hmac::<Sha1>(
            encryption_key.as_bytes(),
            &salt,
            PBKDF2_ITERATIONS,
            &mut aes_key,
        );
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&salt[..16]);
        Self { aes_key, iv }
    }
}

/// A configured secret after the Go plugin's rule was applied.
pub enum SecretValue {
    /// The value was encrypted and is now decrypted.
    Decrypted(SecretString),
    /// The value is used as written; why it was not decrypted.
    Plaintext(SecretString, PlaintextReason),
}

/// Why a secret is used as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaintextReason {
    /// Not base64, or its decoded length is not a multiple of 16: not an encrypted value.
    NotEncrypted,
    /// It looks encrypted but no `plugins.com.utmstack.encryptionKey` was found.
    NoKey,
    /// Decrypted with the key, the padding (or UTF-8) is invalid: a plaintext that looks
    /// like base64, or a value encrypted with another key.
    BadPadding,
}

impl PlaintextReason {
    /// What the start-up warning says (never the value).
    pub fn explanation(self) -> &'static str {
        match self {
            PlaintextReason::NotEncrypted => "is not encrypted, so it is used as written",
            PlaintextReason::NoKey => {
                "looks encrypted but no plugins.com.utmstack.encryptionKey was found in the \
                 pipeline files, so it is used as written"
            }
            PlaintextReason::BadPadding => {
                "looks encrypted but does not decrypt with plugins.com.utmstack.encryptionKey \
                 (invalid padding), so it is used as written"
            }
        }
    }
}

/// Applies the Go plugin's rule to one configured value.
pub fn decrypt_secret(value: &str, key: Option<&DerivedKey>) -> SecretValue {
    let plaintext = |reason| SecretValue::Plaintext(SecretString::from(value.to_string()), reason);
    let Ok(mut bytes) = base64::engine::general_purpose::STANDARD.decode(value) else {
        return plaintext(PlaintextReason::NotEncrypted);
    };
    if bytes.is_empty() || bytes.len() % 16 != 0 {
        return plaintext(PlaintextReason::NotEncrypted);
    }
    let Some(key) = key else {
        return plaintext(PlaintextReason::NoKey);
    };
    let decryptor = Aes128CbcDecryptor::new(&key.aes_key.into(), &key.iv.into());
    let decrypted = match decryptor.decrypt_padded_mut::<Pkcs7>(&mut bytes) {
        Ok(decrypted) => decrypted.to_vec(),
        Err(_) => return plaintext(PlaintextReason::BadPadding),
    };
    match String::from_utf8(decrypted) {
        Ok(text) => SecretValue::Decrypted(SecretString::from(text)),
        Err(_) => plaintext(PlaintextReason::BadPadding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn value_that_is_not_base64_is_plaintext() {
        let key = DerivedKey::derive("k");
        match decrypt_secret("abc8Q~not-base64", Some(&key)) {
            SecretValue::Plaintext(value, PlaintextReason::NotEncrypted) => {
                assert_eq!(value.expose_secret(), "abc8Q~not-base64")
            }
            _ => panic!("expected plaintext"),
        }
    }

    #[test]
    fn base64_of_wrong_length_is_plaintext() {
        let key = DerivedKey::derive("k");
        assert!(matches!(
            decrypt_secret("aGVsbG8=", Some(&key)),
            SecretValue::Plaintext(_, PlaintextReason::NotEncrypted)
        ));
    }
}
