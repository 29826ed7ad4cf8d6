//! The JSON shapes of a read and a write reply: one definition for the CLI's output lines and
//! the HTTP API's bodies, so both speak the same format (docs/CLI.md, docs/HTTP.md).

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::token::bound_context_to_token;
use crate::dvv::NodeClock;
use crate::types::PutReply;

/// What `"encoding"` says when the values (or `"key_encoding"` when the key) are base64.
pub const BASE64: &str = "base64";

/// A read: the key, its siblings (none when the key does not exist or is deleted) and the
/// causal context to write back with. Fields in the documented order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetJson {
    /// The key as UTF-8, or base64 when `key_encoding` says so.
    pub key: String,
    /// Present (as "base64") only when the key is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_encoding: Option<String>,
    /// Every sibling value: UTF-8 text, or all base64 when `encoding` says so.
    pub siblings: Vec<String>,
    /// Present (as "base64") only when some value is not UTF-8; then every sibling is base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// The opaque context token (also what `--context` and `X-Dynakv-Context` take), bound to
    /// this key: a write of another key refuses it.
    pub context: String,
}

impl GetJson {
    /// The JSON form of a read of `key` that returned `values` and `context`.
    pub fn new(key: &[u8], values: &[Bytes], context: &NodeClock) -> GetJson {
        let key_bytes = key;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (key, key_encoding) = match std::str::from_utf8(key) {
            Ok(k) => (k.to_string(), None),
            Err(_) => (b64.encode(key), Some(BASE64.to_string())),
        };
        let texts: Option<Vec<&str>> = values.iter().map(|v| std::str::from_utf8(v).ok()).collect();
        let (siblings, encoding) = match texts {
            Some(texts) => (texts.into_iter().map(str::to_string).collect(), None),
            None => (
                values.iter().map(|v| b64.encode(v)).collect(),
                Some(BASE64.to_string()),
            ),
        };
        GetJson {
            key,
            key_encoding,
            siblings,
            encoding,
            context: bound_context_to_token(key_bytes, context),
        }
    }
}

/// A write (put or delete): the context of the new version and who acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteJson {
    /// The context token of the version just written (write back with it to supersede it),
    /// bound to the key like a read's.
    pub context: String,
    /// Replicas that acknowledged the write.
    pub acks: u8,
    /// Of those, the key's primary replicas.
    pub primary_acks: u8,
    /// Of those, fallbacks holding a hint for a primary.
    pub fallback_acks: u8,
}

impl WriteJson {
    /// The JSON form of a write's reply for `key`.
    pub fn new(key: &[u8], reply: &PutReply) -> WriteJson {
        WriteJson {
            context: bound_context_to_token(key, &reply.context),
            acks: reply.acks,
            primary_acks: reply.primary_acks,
            fallback_acks: reply.fallback_acks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::token::context_from_token_for;

    #[test]
    fn text_stays_text_and_anything_else_is_base64() {
        let vv = NodeClock::new();
        let plain = GetJson::new(b"k", &[Bytes::from_static(b"v1")], &vv);
        assert_eq!(plain.siblings, vec!["v1"]);
        assert_eq!((plain.encoding, plain.key_encoding), (None, None));
        let mixed = GetJson::new(
            b"\xff",
            &[Bytes::from_static(b"v1"), Bytes::from_static(b"\x00\xff")],
            &vv,
        );
        assert_eq!(mixed.key, "/w==");
        assert_eq!(mixed.key_encoding.as_deref(), Some(BASE64));
        assert_eq!(mixed.siblings, vec!["djE=", "AP8="]);
        assert_eq!(mixed.encoding.as_deref(), Some(BASE64));
        assert_eq!(
            context_from_token_for(b"\xff", &mixed.context).ok(),
            Some(vv)
        );
        assert!(context_from_token_for(b"k", &mixed.context).is_err());
    }

    #[test]
    fn optional_fields_are_left_out_when_absent() {
        let line = GetJson::new(b"k", &[], &NodeClock::new());
        let text = serde_json::to_string(&line).expect("encodes");
        assert!(
            text.starts_with(r#"{"key":"k","siblings":[],"context":""#),
            "{text}"
        );
    }
}
