//! The authId of each tenant's webhook: `base64url(HMAC-SHA256(server secret, tenant id))`.
//!
//! Microsoft echoes the authId registered with a subscription in the `Webhook-AuthID`
//! header of every POST, so a correct header proves the caller learnt it from a
//! subscription we made. Deriving it from one server secret means nothing per tenant has
//! to be stored, and every replica computes the same value. While a secret is rotated the
//! previous one is accepted too; subscriptions are re-started with the new authId, after
//! which the previous secret can be dropped.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The server secret(s) authIds are derived from. Never printed.
pub struct WebhookSecrets {
    current: SecretSlice<u8>,
    previous: Option<SecretSlice<u8>>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WebhookSecrets")
            .field("current", &"***")
            .field("previous", &self.previous.as_ref().map(|_| "***"))
            .finish()
    }
}

impl WebhookSecrets {
    /// Secrets from raw bytes: the current one and, while rotating, the previous one.
    pub fn new(current: Vec<u8>, previous: Option<Vec<u8>>) -> Self {
        Self {
            current: current.into(),
            previous: previous.map(Into::into),
        }
    }

    /// A fresh random 32-byte secret, for a store that has none yet.
    pub fn generate_secret() -> Vec<u8> {
        rand::random::<[u8; 32]>().to_vec()
    }

    /// The authId to register for `tenant_id` (derived from the current secret).
    pub fn auth_id(&self, tenant_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(
            mac(self.current.expose_secret(), tenant_id)
                .finalize()
                .into_bytes(),
        )
    }

    /// True when `presented` is the authId of `tenant_id` under the current or the previous
    /// secret. The comparison takes the same time wherever the bytes differ.
    pub fn verify(&self, tenant_id: &str, presented: &str) -> bool {
        let Ok(presented) = URL_SAFE_NO_PAD.decode(presented.trim()) else {
            return false;
        };
        let matches = |secret: &SecretSlice<u8>| {
            mac(secret.expose_secret(), tenant_id)
                .verify_slice(&presented)
                .is_ok()
        };
        // Evaluate both, so timing does not tell which secret matched.
        let current = matches(&self.current);
        let previous = self.previous.as_ref().is_some_and(matches);
        current | previous
    }
}

fn mac(secret: &[u8], tenant_id: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(tenant_id.to_ascii_lowercase().as_bytes());
    mac
}

/// Where a generated webhook secret is kept in the store's metadata.
pub const SECRET_META_KEY: &str = "webhook/secret";

/// The webhook secrets to use: the configured ones, or else the secret generated on a first
/// start and kept in the store, so authIds (and so Microsoft's registrations) survive restarts.
pub async fn load_or_create_secrets(
    configured: Option<&crate::secret::Secret>,
    configured_previous: Option<&crate::secret::Secret>,
    meta: &dyn crate::queue::MetaStore,
) -> Result<WebhookSecrets, crate::queue::QueueError> {
    let previous = configured_previous.map(|secret| secret.expose_secret().as_bytes().to_vec());
    if let Some(secret) = configured {
        return Ok(WebhookSecrets::new(
            secret.expose_secret().as_bytes().to_vec(),
            previous,
        ));
    }
    if let Some(stored) = meta.get_meta(SECRET_META_KEY).await? {
        return Ok(WebhookSecrets::new(stored, previous));
    }
    // Replicas starting together on a shared store keep whichever secret was stored first.
    let generated = WebhookSecrets::generate_secret();
    let stored = meta
        .put_meta_if_absent(SECRET_META_KEY, generated.clone())
        .await?;
    if stored == generated {
        tracing::info!("generated the webhook secret and kept it in the store");
    }
    Ok(WebhookSecrets::new(stored, previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";

    #[test]
    fn auth_id_is_stable_per_tenant_and_secret() {
        let secrets = WebhookSecrets::new(b"server secret".to_vec(), None);
        let auth_id = secrets.auth_id(TENANT);
        assert_eq!(auth_id, secrets.auth_id(&TENANT.to_uppercase()));
        assert_ne!(
            auth_id,
            secrets.auth_id("00000000-0000-0000-0000-000000000000")
        );
        assert!(secrets.verify(TENANT, &auth_id));
        assert!(!secrets.verify("00000000-0000-0000-0000-000000000000", &auth_id));
        assert!(!secrets.verify(TENANT, "o365activityapinotification"));
        assert!(!secrets.verify(TENANT, ""));
    }

    #[test]
    fn rotation_accepts_the_previous_secret_until_it_is_dropped() {
        let old = WebhookSecrets::new(b"old".to_vec(), None);
        let rotating = WebhookSecrets::new(b"new".to_vec(), Some(b"old".to_vec()));
        let rotated = WebhookSecrets::new(b"new".to_vec(), None);
        let old_auth_id = old.auth_id(TENANT);
        assert!(rotating.verify(TENANT, &old_auth_id));
        assert!(rotating.verify(TENANT, &rotating.auth_id(TENANT)));
        assert_ne!(
            rotating.auth_id(TENANT),
            old_auth_id,
            "new starts use the new secret"
        );
        assert!(!rotated.verify(TENANT, &old_auth_id));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let secrets = WebhookSecrets::new(b"hunter2-secret".to_vec(), Some(b"old-secret".to_vec()));
        let printed = format!("{secrets:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("old-secret"));
    }
}
