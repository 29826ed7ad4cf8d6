//! Causal-context tokens: the opaque form in which clients carry a [`VersionVector`] from a read to
//! the next write.
//!
//! # Format (version 1)
//! ```text
//! byte 0        FORMAT_V1 (0xD1): magic and version in one byte
//! varint        number of entries (at most MAX_CONTEXT_ENTRIES)
//! per entry     varint node id (u32), varint incarnation (u64), varint counter (u64, >= 1)
//! ```
//! Varints are unsigned LEB128 (7 bits per byte, low bits first, high bit = "more follows") and must
//! be minimal, so every context has exactly one encoding. Entries are strictly increasing by
//! `(node, incarnation)`. A zero-length input is the empty context, so a client that never read can
//! send nothing. As text, a token is the bytes in base64url without padding; the empty string is the
//! empty context too.
//!
//! Tokens come from clients and are untrusted: decoding checks everything above and never panics.
//! Every problem is reported as [`Error::MalformedContext`] with a message naming it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use dynakv_ring::NodeId;

use super::varint::{put_varint, Reader};
use crate::dvv::{Actor, VersionVector};
use crate::error::Error;

/// The first byte of every non-empty binary context: magic and format version 1 in one.
pub const FORMAT_V1: u8 = 0xD1;

/// The most entries (actors) a context may have. Real contexts have a handful (N replicas plus
/// fallbacks and past incarnations); the bound caps the work an untrusted token can cause.
pub const MAX_CONTEXT_ENTRIES: usize = 4096;

/// The largest counter a context token may carry.
///
/// It is below [`crate::dvv::MAX_COUNTER`] (what replicas accept) so that a client cannot push a
/// stored counter to where replicas would refuse it.
pub const MAX_TOKEN_COUNTER: u64 = 1 << 62;

/// The longest binary context: header plus the maximum count of maximal entries.
const MAX_CONTEXT_BYTES: usize = 1 + 2 + MAX_CONTEXT_ENTRIES * (5 + 5 + 10);

/// The longest text token (base64 of [`MAX_CONTEXT_BYTES`]).
const MAX_TOKEN_CHARS: usize = MAX_CONTEXT_BYTES.div_ceil(3) * 4;

/// Encodes a context in the compact binary format (see the module docs). Use it where the context
/// travels as bytes (client protocol frames); [`context_to_token`] gives the text form.
pub fn encode_context(vv: &VersionVector) -> Vec<u8> {
    let entries = vv.entries();
    let mut out = Vec::with_capacity(2 + entries.len() * 6);
    out.push(FORMAT_V1);
    put_varint(&mut out, u64::try_from(entries.len()).unwrap_or(u64::MAX));
    for (actor, counter) in entries {
        put_varint(&mut out, u64::from(actor.node.0));
        put_varint(&mut out, actor.incarnation);
        put_varint(&mut out, *counter);
    }
    out
}

/// Decodes a binary context received from a client. Zero bytes decode to the empty context.
///
/// Fails with [`Error::MalformedContext`] on a wrong format byte, truncation, trailing bytes, a
/// varint that overflows or is not minimal, more than [`MAX_CONTEXT_ENTRIES`] entries, actors out of
/// order or repeated, and counters that are zero or above [`MAX_TOKEN_COUNTER`].
pub fn decode_context(bytes: &[u8]) -> Result<VersionVector, Error> {
    decode(bytes).map_err(Error::into_context)
}

/// Encodes a context as text: base64url without padding of [`encode_context`]. Use it wherever a
/// context must be a string (CLI output, HTTP headers, JSON).
pub fn context_to_token(vv: &VersionVector) -> String {
    URL_SAFE_NO_PAD.encode(encode_context(vv))
}

/// Decodes a text token made by [`context_to_token`]. The empty string is the empty context.
///
/// Fails with [`Error::MalformedContext`] when the text is too long or not base64url without
/// padding, and for every reason listed at [`decode_context`].
pub fn context_from_token(token: &str) -> Result<VersionVector, Error> {
    if token.len() > MAX_TOKEN_CHARS {
        return Err(Error::MalformedContext(format!(
            "token of {} characters exceeds the limit of {MAX_TOKEN_CHARS}",
            token.len()
        )));
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|e| {
        Error::MalformedContext(format!("token is not base64url without padding: {e}"))
    })?;
    decode_context(&bytes)
}

fn decode(bytes: &[u8]) -> Result<VersionVector, Error> {
    let Some((&format, rest)) = bytes.split_first() else {
        return Ok(VersionVector::new());
    };
    if format != FORMAT_V1 {
        return Err(Error::Decode(format!(
            "unknown format byte {format:#04x} (expected {FORMAT_V1:#04x})"
        )));
    }
    let mut reader = Reader::new(rest, 1);
    let count = reader.varint("entry count", u64::MAX)?;
    let count = usize::try_from(count)
        .ok()
        .filter(|&c| c <= MAX_CONTEXT_ENTRIES)
        .ok_or_else(|| {
            Error::Decode(format!(
                "{count} entries exceed the limit of {MAX_CONTEXT_ENTRIES}"
            ))
        })?;
    // Every entry takes at least 3 bytes: never allocate more than the input can fill.
    let mut entries: Vec<(Actor, u64)> = Vec::with_capacity(count.min(reader.rest.len() / 3));
    for i in 0..count {
        let node = reader.varint("node id", u64::from(u32::MAX))?;
        let incarnation = reader.varint("incarnation", u64::MAX)?;
        let counter = reader.varint("counter", u64::MAX)?;
        let actor = Actor::new(
            NodeId(
                u32::try_from(node)
                    .map_err(|_| Error::Decode("node id overflows 32 bits".into()))?,
            ),
            incarnation,
        );
        if counter == 0 {
            return Err(Error::Decode(format!("entry {i} has a zero counter")));
        }
        if counter > MAX_TOKEN_COUNTER {
            return Err(Error::Decode(format!(
                "entry {i} has counter {counter} above the limit of {MAX_TOKEN_COUNTER}"
            )));
        }
        if let Some((prev, _)) = entries.last() {
            if *prev == actor {
                return Err(Error::Decode(format!("entry {i} repeats an actor")));
            }
            if *prev > actor {
                return Err(Error::Decode(format!(
                    "entry {i} is out of actor order (entries must be sorted)"
                )));
            }
        }
        entries.push((actor, counter));
    }
    if !reader.rest.is_empty() {
        return Err(Error::Decode(format!(
            "{} trailing bytes after the last entry",
            reader.rest.len()
        )));
    }
    VersionVector::try_from(entries)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn actor(node: u32, incarnation: u64) -> Actor {
        Actor::new(NodeId(node), incarnation)
    }

    fn vv(entries: &[(u32, u32, u64)]) -> VersionVector {
        VersionVector::from_entries(
            entries
                .iter()
                .map(|&(n, i, c)| (actor(n, u64::from(i)), c))
                .collect(),
        )
    }

    fn err(bytes: &[u8]) -> String {
        match decode_context(bytes) {
            Err(Error::MalformedContext(m)) => m,
            other => panic!("expected MalformedContext for {bytes:?}, got {other:?}"),
        }
    }

    #[test]
    fn known_encoding() {
        let ctx = vv(&[(1, 0, 3), (300, 2, 1)]);
        let bytes = encode_context(&ctx);
        assert_eq!(bytes, vec![0xD1, 2, 1, 0, 3, 0xAC, 0x02, 2, 1]);
        assert_eq!(decode_context(&bytes).unwrap(), ctx);
        assert_eq!(encode_context(&VersionVector::new()), vec![0xD1, 0]);
    }

    #[test]
    fn empty_inputs_are_the_empty_context() {
        assert!(decode_context(&[]).unwrap().is_empty());
        assert!(decode_context(&[0xD1, 0]).unwrap().is_empty());
        assert!(context_from_token("").unwrap().is_empty());
        let token = context_to_token(&VersionVector::new());
        assert!(context_from_token(&token).unwrap().is_empty());
    }

    #[test]
    fn malformed_binary_names_the_problem() {
        assert!(err(&[0x00, 0]).contains("unknown format byte 0x00"));
        assert!(err(&[0xD2]).contains("unknown format byte"));
        assert!(err(&[0xD1]).contains("truncated: entry count"));
        assert!(err(&[0xD1, 1, 1, 0]).contains("truncated: counter"));
        assert!(err(&[0xD1, 1, 0x81]).contains("truncated: node id"));
        assert!(err(&[0xD1, 0, 7]).contains("1 trailing bytes"));
        assert!(err(&[0xD1, 1, 1, 0, 1, 9, 9]).contains("2 trailing bytes"));
        let mut long = vec![0xD1];
        long.extend([0xFF; 10]);
        long.push(0x01);
        assert!(err(&long).contains("varint overflow: entry count"));
        let mut big = vec![0xD1];
        big.extend([0xFF; 9]);
        big.push(0x02); // bit 64 set
        assert!(err(&big).contains("exceeds 64 bits"));
        assert!(err(&[0xD1, 1, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 1]).contains("node id"));
        // Incarnations are 64-bit: one past 2^32 is valid.
        let wide = decode_context(&[0xD1, 1, 1, 0x80, 0x80, 0x80, 0x80, 0x10, 1]).expect("valid");
        assert_eq!(wide.entries()[0].0.incarnation, 1 << 32);
        assert!(err(&[0xD1, 0x81, 0x00]).contains("non-minimal varint"));
        assert!(err(&[0xD1, 0x81, 0x20]).contains("4097 entries exceed the limit of 4096"));
        assert!(err(&[0xD1, 1, 1, 0, 0]).contains("entry 0 has a zero counter"));
        assert!(err(&[0xD1, 2, 2, 0, 1, 1, 0, 1]).contains("entry 1 is out of actor order"));
        assert!(err(&[0xD1, 2, 1, 5, 1, 1, 4, 1]).contains("out of actor order"));
        assert!(err(&[0xD1, 2, 1, 0, 1, 1, 0, 2]).contains("entry 1 repeats an actor"));
        let mut huge = vec![0xD1, 1, 1, 0];
        put_varint(&mut huge, MAX_TOKEN_COUNTER + 1);
        assert!(err(&huge).contains("above the limit"));
    }

    #[test]
    fn limits_are_accepted() {
        let entries: Vec<_> = (0..MAX_CONTEXT_ENTRIES as u32)
            .map(|n| (n, u32::MAX, MAX_TOKEN_COUNTER))
            .collect();
        let ctx = vv(&entries);
        let token = context_to_token(&ctx);
        assert!(token.len() <= MAX_TOKEN_CHARS);
        assert_eq!(context_from_token(&token).unwrap(), ctx);
    }

    #[test]
    fn malformed_tokens_name_the_problem() {
        let msg = |t: &str| match context_from_token(t) {
            Err(Error::MalformedContext(m)) => m,
            other => panic!("expected MalformedContext for {t:?}, got {other:?}"),
        };
        assert!(msg("not base64!").contains("not base64url"));
        assert!(msg("0QA=").contains("not base64url")); // padding is refused
        assert!(msg("0Q+A").contains("not base64url")); // standard alphabet is refused
        assert!(msg("AAA").contains("unknown format byte"));
        assert!(msg(&"A".repeat(MAX_TOKEN_CHARS + 1)).contains("exceeds the limit"));
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        prop::collection::vec(
            (
                0u32..8,
                prop_oneof![Just(0u32), any::<u32>()],
                1u64..=MAX_TOKEN_COUNTER,
            ),
            0..12,
        )
        .prop_map(|es| vv(&es))
    }

    proptest! {
        #[test]
        fn token_round_trip(ctx in arb_vv()) {
            let bytes = encode_context(&ctx);
            prop_assert_eq!(decode_context(&bytes).unwrap(), ctx.clone());
            prop_assert_eq!(context_from_token(&context_to_token(&ctx)).unwrap(), ctx);
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_context(&bytes);
            let mut framed = vec![FORMAT_V1];
            framed.extend(&bytes);
            if let Ok(ctx) = decode_context(&framed) {
                // Anything accepted is canonical: it re-encodes to the same bytes.
                prop_assert_eq!(encode_context(&ctx), framed);
            }
        }

        #[test]
        fn decoding_random_text_never_panics(s in ".{0,40}") {
            let _ = context_from_token(&s);
        }
    }
}
