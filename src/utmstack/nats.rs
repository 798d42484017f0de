//! UTMStack's NATS: in UTMStack mode, the store is chosen from `NATS_URL` unless the
//! configuration chooses one.
//!
//! UTMStack starts its plugins on every worker node with `NATS_URL` set (its Go plugin
//! coordinates its copies there). When it is set and neither the settings file nor the
//! environment sets `store.backend` or `[store.nats]`, [`select_store`] writes
//! `store.backend = "nats"` and `[store.nats]` with `urls` from `NATS_URL` and the prefix
//! [`NATS_PREFIX`], so the copies share one queue and one leader; the replica id stays its
//! default, the host name. Our stream and buckets are all named `o365_connector_…`, never
//! UTMStack's `INGEST_JOBS_O365` stream or `ingest_cursors` bucket. Without `NATS_URL` the
//! embedded store under `{WORK_DIR}/o365-connector` stays.
//!
//! `NATS_URL` is one URL or several separated by commas; a URL without a scheme gets
//! `nats://`, as UTMStack's client does. Credentials in it (`user:password@` or `token@`)
//! are taken out of every URL and returned as [`NatsUrlCredentials`], whose `Debug` masks
//! them: the URLs that reach logs, errors, `/status` and `check` carry none, and an error
//! about `NATS_URL` never shows its value.

use std::collections::HashMap;

use secrecy::SecretString;
use toml::{Table, Value};

use super::UtmstackError;
use crate::config::{ENV_PREFIX, NatsUrlCredentials};

/// The environment variable naming UTMStack's NATS servers.
pub const ENV_NATS_URL: &str = "NATS_URL";
/// Prefix of our stream and bucket names on UTMStack's NATS.
pub const NATS_PREFIX: &str = "o365_connector";

/// `NATS_URL` split into URLs without credentials, and the credentials.
#[derive(Debug, Clone)]
pub struct NatsUrl {
    /// The server URLs, each `scheme://host:port` without a user part.
    pub urls: Vec<String>,
    /// The credentials of the first URL that carries some.
    pub credentials: Option<NatsUrlCredentials>,
}

/// Chooses the store from `NATS_URL` when `env` has it and neither `table` (the settings
/// file, UTMStack defaults filled) nor an `O365_CONNECTOR__STORE__…` variable chooses
/// one. Returns the credentials to put into the configuration once it is built.
pub fn select_store(
    table: &mut Table,
    env: &HashMap<String, String>,
) -> Result<Option<NatsUrlCredentials>, UtmstackError> {
    let Some(value) = env
        .get(ENV_NATS_URL)
        .filter(|value| !value.trim().is_empty())
    else {
        return Ok(None);
    };
    if configuration_chooses_store(table, env) {
        return Ok(None);
    }
    let parsed = parse_nats_url(value)?;
    let store = table
        .entry("store".to_string())
        .or_insert_with(|| Value::Table(Table::new()));
    let Value::Table(store) = store else {
        return Ok(None);
    };
    store.insert("backend".into(), Value::String("nats".into()));
    let mut nats = Table::new();
    nats.insert(
        "urls".into(),
        Value::Array(parsed.urls.into_iter().map(Value::String).collect()),
    );
    nats.insert("prefix".into(), Value::String(NATS_PREFIX.into()));
    store.insert("nats".into(), Value::Table(nats));
    Ok(parsed.credentials)
}

/// True when the settings set `store.backend` or `[store.nats]`, in the file or through
/// `O365_CONNECTOR__STORE__BACKEND` / `O365_CONNECTOR__STORE__NATS__URLS`.
fn configuration_chooses_store(table: &Table, env: &HashMap<String, String>) -> bool {
    let in_file = table
        .get("store")
        .and_then(Value::as_table)
        .is_some_and(|store| store.contains_key("backend") || store.contains_key("nats"));
    let in_env = env.iter().any(|(name, value)| {
        let name = name.to_ascii_uppercase();
        !value.is_empty()
            && [
                format!("{ENV_PREFIX}STORE__BACKEND"),
                format!("{ENV_PREFIX}STORE__NATS__URLS"),
            ]
            .contains(&name)
    });
    in_file || in_env
}

/// Splits `NATS_URL` into URLs without credentials and the credentials. The error never
/// holds the value.
pub fn parse_nats_url(value: &str) -> Result<NatsUrl, UtmstackError> {
    let mut urls = Vec::new();
    let mut credentials = None;
    for written in value
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
    {
        let with_scheme = if written.contains("://") {
            written.to_string()
        } else {
            format!("nats://{written}")
        };
        let mut url = url::Url::parse(&with_scheme).map_err(|_| UtmstackError::NatsUrl {
            reason: "a URL cannot be parsed; write nats://[user:password@]host:port",
        })?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(UtmstackError::NatsUrl {
                reason: "a URL names no host; write nats://[user:password@]host:port",
            });
        }
        if let Some(found) = credentials_of(&url)? {
            credentials.get_or_insert(found);
        }
        // Both succeed: the URL has a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        urls.push(url.as_str().trim_end_matches('/').to_string());
    }
    if urls.is_empty() {
        return Err(UtmstackError::NatsUrl {
            reason: "lists no server; write nats://host:port",
        });
    }
    Ok(NatsUrl { urls, credentials })
}

/// The user part of `url`: `user:password` or a token.
fn credentials_of(url: &url::Url) -> Result<Option<NatsUrlCredentials>, UtmstackError> {
    let undecodable = || UtmstackError::NatsUrl {
        reason: "a URL's user part is not valid percent-encoded UTF-8",
    };
    if url.username().is_empty() {
        return Ok(None);
    }
    let user = percent_decode(url.username()).ok_or_else(undecodable)?;
    let credentials = match url.password() {
        Some(password) => NatsUrlCredentials::UserPassword {
            user,
            password: SecretString::from(percent_decode(password).ok_or_else(undecodable)?),
        },
        None => NatsUrlCredentials::Token(SecretString::from(user)),
    };
    Ok(Some(credentials))
}

/// Decodes `%XX` escapes; `None` when an escape is malformed or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn user_and_password_are_taken_out_of_every_url_and_decoded() {
        let parsed =
            parse_nats_url("nats://ops:p%40ss@nats-1:4222, ops:p%40ss@nats-2:4222").unwrap();
        assert_eq!(parsed.urls, ["nats://nats-1:4222", "nats://nats-2:4222"]);
        let Some(NatsUrlCredentials::UserPassword { user, password }) = &parsed.credentials else {
            panic!("{:?}", parsed.credentials);
        };
        assert_eq!(user, "ops");
        assert_eq!(password.expose_secret(), "p@ss");
        assert!(!format!("{parsed:?}").contains("p@ss"));
    }

    #[test]
    fn a_lone_user_part_is_a_token() {
        let parsed = parse_nats_url("tls://s3cr3t-token@nats:4222").unwrap();
        assert_eq!(parsed.urls, ["tls://nats:4222"]);
        let Some(NatsUrlCredentials::Token(token)) = &parsed.credentials else {
            panic!("{:?}", parsed.credentials);
        };
        assert_eq!(token.expose_secret(), "s3cr3t-token");
        assert!(!format!("{parsed:?}").contains("s3cr3t"));
    }

    #[test]
    fn an_unusable_url_is_refused_without_showing_the_value() {
        for value in [
            "nats://user:hunter2@",
            " , ",
            "nats://user:hunter2@host:99999",
        ] {
            let error = parse_nats_url(value).unwrap_err().to_string();
            assert!(error.contains("NATS_URL"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn nats_url_chooses_the_nats_store_with_our_prefix_unless_the_settings_choose() {
        let mut table = Table::new();
        let credentials =
            select_store(&mut table, &env(&[("NATS_URL", "nats://u:pw@nats:4222")])).unwrap();
        assert!(credentials.is_some());
        let store = table["store"].as_table().unwrap();
        assert_eq!(store["backend"].as_str(), Some("nats"));
        assert_eq!(store["nats"]["prefix"].as_str(), Some(NATS_PREFIX));
        assert_eq!(
            store["nats"]["urls"].as_array().unwrap()[0].as_str(),
            Some("nats://nats:4222")
        );

        let mut chosen: Table = toml::from_str("[store]\nbackend = \"embedded\"\n").unwrap();
        let credentials =
            select_store(&mut chosen, &env(&[("NATS_URL", "nats://nats:4222")])).unwrap();
        assert!(credentials.is_none());
        assert!(!chosen["store"].as_table().unwrap().contains_key("nats"));

        let mut by_env = Table::new();
        select_store(
            &mut by_env,
            &env(&[
                ("NATS_URL", "nats://nats:4222"),
                ("O365_CONNECTOR__STORE__BACKEND", "embedded"),
            ]),
        )
        .unwrap();
        assert!(by_env.get("store").is_none());

        let mut without = Table::new();
        select_store(&mut without, &env(&[])).unwrap();
        assert!(without.get("store").is_none());
    }
}
