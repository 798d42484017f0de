//! The one way a JSON body from Microsoft is parsed: token and error answers of the login
//! endpoints, OpenID discovery, subscription and listing answers, API error bodies and
//! webhook notifications all go through [`from_slice`].
//!
//! Guarantees: a body is accepted with or without a leading UTF-8 byte-order mark
//! (`EF BB BF`), which the Management Activity API has put in front of its JSON since May
//! 2025 (Elastic's Filebeat broke on it: elastic/beats#44327). Only one mark at byte 0 is
//! skipped; anywhere else it is the parse error it always was. Blobs are split by the
//! streaming splitter, which skips the same mark itself (`worker::splitter`).

use serde::de::DeserializeOwned;

/// The UTF-8 encoding of U+FEFF, the byte-order mark.
pub const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// `body` without its leading byte-order mark, if it has one.
pub fn without_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(&UTF8_BOM[..]).unwrap_or(body)
}

/// Parses `body` as JSON after skipping a leading byte-order mark.
pub fn from_slice<T: DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(without_bom(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_bom(body: &[u8]) -> Vec<u8> {
        [&UTF8_BOM[..], body].concat()
    }

    #[test]
    fn a_body_parses_the_same_with_and_without_a_leading_bom() {
        let body = br#"[{"contentId":"a"}]"#;
        let plain: serde_json::Value = from_slice(body).unwrap();
        let marked: serde_json::Value = from_slice(&with_bom(body)).unwrap();
        assert_eq!(plain, marked);
        assert!(
            serde_json::from_slice::<serde_json::Value>(&with_bom(body)).is_err(),
            "serde_json alone refuses the mark: the reason this module exists"
        );
    }

    #[test]
    fn only_one_mark_at_byte_zero_is_skipped() {
        assert_eq!(without_bom(&with_bom(b"{}")), b"{}");
        assert_eq!(without_bom(b"{}"), b"{}");
        assert_eq!(without_bom(&UTF8_BOM), b"");
        assert_eq!(
            without_bom(b"\xEF\xBB"),
            b"\xEF\xBB",
            "an incomplete mark stays"
        );
        assert!(from_slice::<serde_json::Value>(&with_bom(&with_bom(b"{}"))).is_err());
        assert!(from_slice::<serde_json::Value>(&[b" ", &UTF8_BOM[..], b"{}"].concat()).is_err());
        assert!(
            from_slice::<serde_json::Value>(&UTF8_BOM).is_err(),
            "a mark alone is no JSON"
        );
    }
}
