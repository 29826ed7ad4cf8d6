//! Causal-context tokens: the opaque form in which clients carry a context (a [`NodeClock`]: the
//! dots of the key they read) from a read to the next write.
//!
//! # Formats
//! ```text
//! version 1, a context without holes (every actor's dots are 1..=n):
//! byte 0        FORMAT_V1 (0xD1): magic and version in one byte
//! varint        number of entries (at most MAX_CONTEXT_ENTRIES)
//! per entry     varint node id (u32), varint incarnation (u64), varint counter n (u64, >= 1)
//!
//! version 2, a context with holes (some actor's dots are not 1..=n):
//! byte 0        FORMAT_V2 (0xD2)
//! the rest      the body of a node clock (`codec::clock`, after its format byte): per actor
//!               node, incarnation, base, then its ranges above the base as gap and length
//!
//! key-bound, a context tied to the key it was read from (what reads and writes hand out):
//! byte 0        FORMAT_BOUND (0xDB)
//! bytes 1..=8   xxh3-64 of the key, big-endian
//! the rest      a version-1 or version-2 context as above (format byte included)
//! ```
//! A write whose bound context names another key is refused: a context from a read of `j` sent
//! with a write of `k` would supersede `k`'s values that happen to share dots with it, which the
//! client never saw (an application bug that would otherwise lose data silently). Unbound
//! tokens, made before binding existed or by hand, are still accepted.
//!
//! A context without holes is always written as version 1 and one with holes as version 2, so
//! every context has exactly one encoding; a version-2 token without a hole is refused. Varints
//! are unsigned LEB128 (7 bits per byte, low bits first, high bit = "more follows") and must be
//! minimal. Entries are strictly increasing by `(node, incarnation)`. A zero-length input is the
//! empty context, so a client that never read can send nothing. As text, a token is the bytes in
//! base64url without padding; the empty string is the empty context too.
//!
//! Today every context is hole-free (counters are per key), so tokens are version 1, as before
//! version 2 existed; version 2 is there for the counters per partition of the server-wide
//! clocks design, under which a key's dots of one actor are sparse.
//!
//! Tokens come from clients and are untrusted: decoding checks everything above and never panics.
//! Every problem is reported as [`Error::MalformedContext`] with a message naming it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use dynakv_ring::NodeId;

use super::clock::{decode_clock, encode_clock, CLOCK_V1};
use super::varint::{put_varint, Reader};
use crate::dvv::{Actor, NodeClock, VersionVector};
use crate::error::Error;

/// The first byte of a binary context without holes: magic and format version 1 in one.
pub const FORMAT_V1: u8 = 0xD1;

/// The first byte of a binary context with holes (format version 2).
pub const FORMAT_V2: u8 = 0xD2;

/// The first byte of a key-bound context: the key's hash, then a version-1 or -2 context.
pub const FORMAT_BOUND: u8 = 0xDB;

/// The most entries (actors) a context may have. Real contexts have a handful (N replicas plus
/// fallbacks and past incarnations); the bound caps the work an untrusted token can cause.
pub const MAX_CONTEXT_ENTRIES: usize = 4096;

/// The most holes (ranges above an actor's base, over all actors) a context may have.
pub const MAX_CONTEXT_RANGES: usize = 4096;

/// The largest counter a context token may carry.
///
/// It is below [`crate::dvv::MAX_COUNTER`] (what replicas accept) so that a client cannot push a
/// stored counter to where replicas would refuse it.
pub const MAX_TOKEN_COUNTER: u64 = 1 << 62;

/// The longest binary context: header, the maximum count of maximal entries (node 5 bytes,
/// incarnation 10, base or counter 10, range count 3) and of maximal ranges (two 10-byte varints).
const MAX_CONTEXT_BYTES: usize =
    1 + 2 + MAX_CONTEXT_ENTRIES * (5 + 10 + 10 + 3) + MAX_CONTEXT_RANGES * 20;

/// The longest text token (base64 of a key binding and [`MAX_CONTEXT_BYTES`]).
const MAX_TOKEN_CHARS: usize = (9 + MAX_CONTEXT_BYTES).div_ceil(3) * 4;

/// The hash a bound context carries for `key` (xxh3-64).
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Encodes a context bound to the key it belongs to (`FORMAT_BOUND`): what reads and writes hand
/// out, so that a write with the context of another key is refused ([`check_binding`]).
pub fn encode_bound_context(key: &[u8], context: &NodeClock) -> Vec<u8> {
    encode_hash_bound_context(key_hash(key), context)
}

/// [`encode_bound_context`] for a key known only by its [`key_hash`] (a client's stored context).
pub fn encode_hash_bound_context(hash: u64, context: &NodeClock) -> Vec<u8> {
    let inner = encode_context(context);
    let mut out = Vec::with_capacity(9 + inner.len());
    out.push(FORMAT_BOUND);
    out.extend_from_slice(&hash.to_be_bytes());
    out.extend_from_slice(&inner);
    out
}

/// Text form of [`encode_bound_context`] (base64url without padding).
pub fn bound_context_to_token(key: &[u8], context: &NodeClock) -> String {
    hash_bound_context_to_token(key_hash(key), context)
}

/// Text form of [`encode_hash_bound_context`].
pub fn hash_bound_context_to_token(hash: u64, context: &NodeClock) -> String {
    URL_SAFE_NO_PAD.encode(encode_hash_bound_context(hash, context))
}

/// Decodes a binary context, bound or not: the context and, when bound, its key's hash.
///
/// Fails as [`decode_context`] does, and on a binding without a context after it or nested in
/// another binding.
pub fn decode_keyed_context(bytes: &[u8]) -> Result<(NodeClock, Option<u64>), Error> {
    match bytes.split_first() {
        Some((&FORMAT_BOUND, rest)) => {
            let (hash, inner) = match rest.split_at_checked(8) {
                Some((h, inner)) if !inner.is_empty() && inner[0] != FORMAT_BOUND => (h, inner),
                _ => {
                    return Err(Error::MalformedContext(
                        "a key binding must be followed by a version-1 or -2 context".into(),
                    ))
                }
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(hash);
            Ok((decode_context(inner)?, Some(u64::from_be_bytes(be))))
        }
        _ => Ok((decode_context(bytes)?, None)),
    }
}

/// Decodes a text token, bound or not (see [`decode_keyed_context`]).
pub fn keyed_context_from_token(token: &str) -> Result<(NodeClock, Option<u64>), Error> {
    decode_keyed_context(&token_bytes(token)?)
}

/// Decodes a token sent with a write of `key`: refused when it is bound to another key.
pub fn context_from_token_for(key: &[u8], token: &str) -> Result<NodeClock, Error> {
    let (context, bound) = keyed_context_from_token(token)?;
    check_binding(key, bound)?;
    Ok(context)
}

/// Refuses a context bound to a key other than `key` (unbound contexts pass).
pub fn check_binding(key: &[u8], bound: Option<u64>) -> Result<(), Error> {
    match bound {
        Some(h) if h != key_hash(key) => Err(Error::MalformedContext(
            "this context came from a read of another key; read this key and write back with its context".into(),
        )),
        _ => Ok(()),
    }
}

/// Whether `context` is within the token limits ([`MAX_CONTEXT_ENTRIES`] actors,
/// [`MAX_CONTEXT_RANGES`] holes): what a client may send and what a stored object may carry, so
/// every context a single copy returns can be sent back. `Err` holds `(actors, ranges)`.
/// (Counters are checked apart: [`MAX_TOKEN_COUNTER`].)
pub fn check_context_limits(context: &NodeClock) -> Result<(), (usize, usize)> {
    let (actors, ranges) = (context.actor_count(), context.range_count());
    if actors > MAX_CONTEXT_ENTRIES || ranges > MAX_CONTEXT_RANGES {
        return Err((actors, ranges));
    }
    Ok(())
}

/// The highest counter of any actor in `context` (0 when empty).
pub fn highest_counter(context: &NodeClock) -> u64 {
    context
        .entries()
        .iter()
        .map(|(_, e)| e.top())
        .max()
        .unwrap_or(0)
}

/// Encodes a context in the compact binary format (see the module docs). Use it where the context
/// travels as bytes (client protocol frames); [`context_to_token`] gives the text form.
pub fn encode_context(context: &NodeClock) -> Vec<u8> {
    if context.range_count() > 0 {
        let mut out = encode_clock(context);
        if let Some(first) = out.first_mut() {
            *first = FORMAT_V2;
        }
        return out;
    }
    let entries = context.entries();
    let mut out = Vec::with_capacity(2 + entries.len() * 6);
    out.push(FORMAT_V1);
    put_varint(&mut out, u64::try_from(entries.len()).unwrap_or(u64::MAX));
    for (actor, entry) in entries {
        put_varint(&mut out, u64::from(actor.node.0));
        put_varint(&mut out, actor.incarnation);
        put_varint(&mut out, entry.base());
    }
    out
}

/// Decodes a binary context received from a client. Zero bytes decode to the empty context.
///
/// Fails with [`Error::MalformedContext`] on a wrong format byte, truncation, trailing bytes, a
/// varint that overflows or is not minimal, more than [`MAX_CONTEXT_ENTRIES`] entries or
/// [`MAX_CONTEXT_RANGES`] ranges, actors out of order or repeated, counters that are zero or
/// above [`MAX_TOKEN_COUNTER`], and a version-2 token without a hole.
pub fn decode_context(bytes: &[u8]) -> Result<NodeClock, Error> {
    decode(bytes).map_err(Error::into_context)
}

/// Encodes a context as text: base64url without padding of [`encode_context`]. Use it wherever a
/// context must be a string (CLI output, HTTP headers, JSON).
pub fn context_to_token(context: &NodeClock) -> String {
    URL_SAFE_NO_PAD.encode(encode_context(context))
}

/// Decodes a text token made by [`context_to_token`]. The empty string is the empty context.
///
/// Fails with [`Error::MalformedContext`] when the text is too long or not base64url without
/// padding, and for every reason listed at [`decode_context`].
/// A key-bound token is accepted too; its binding is dropped (use [`context_from_token_for`] where
/// the key is known).
pub fn context_from_token(token: &str) -> Result<NodeClock, Error> {
    keyed_context_from_token(token).map(|(context, _)| context)
}

fn token_bytes(token: &str) -> Result<Vec<u8>, Error> {
    if token.len() > MAX_TOKEN_CHARS {
        return Err(Error::MalformedContext(format!(
            "token of {} characters exceeds the limit of {MAX_TOKEN_CHARS}",
            token.len()
        )));
    }
    URL_SAFE_NO_PAD.decode(token).map_err(|e| {
        Error::MalformedContext(format!("token is not base64url without padding: {e}"))
    })
}

fn decode(bytes: &[u8]) -> Result<NodeClock, Error> {
    match bytes.split_first() {
        None => Ok(NodeClock::new()),
        Some((&FORMAT_V1, rest)) => decode_v1(rest).map(|vv| NodeClock::from_vector(&vv)),
        Some((&FORMAT_V2, rest)) => decode_v2(rest),
        Some((&format, _)) => Err(Error::Decode(format!(
            "unknown format byte {format:#04x} (expected {FORMAT_V1:#04x} or {FORMAT_V2:#04x})"
        ))),
    }
}

/// A version-2 body: a node clock, within the token's limits, with at least one hole.
fn decode_v2(rest: &[u8]) -> Result<NodeClock, Error> {
    if rest.len() > MAX_CONTEXT_BYTES {
        return Err(Error::Decode(format!(
            "{} bytes exceed the limit of {MAX_CONTEXT_BYTES}",
            rest.len()
        )));
    }
    let mut framed = Vec::with_capacity(rest.len() + 1);
    framed.push(CLOCK_V1);
    framed.extend_from_slice(rest);
    let clock = decode_clock(&framed)?;
    if clock.actor_count() > MAX_CONTEXT_ENTRIES {
        return Err(Error::Decode(format!(
            "{} entries exceed the limit of {MAX_CONTEXT_ENTRIES}",
            clock.actor_count()
        )));
    }
    match clock.range_count() {
        0 => Err(Error::Decode(
            "a version-2 token without a hole (such a context is written as version 1)".into(),
        )),
        n if n > MAX_CONTEXT_RANGES => Err(Error::Decode(format!(
            "{n} ranges exceed the limit of {MAX_CONTEXT_RANGES}"
        ))),
        _ => match clock
            .entries()
            .iter()
            .position(|(_, e)| e.top() > MAX_TOKEN_COUNTER)
        {
            Some(i) => Err(Error::Decode(format!(
                "entry {i} has a counter above the limit of {MAX_TOKEN_COUNTER}"
            ))),
            None => Ok(clock),
        },
    }
}

fn decode_v1(rest: &[u8]) -> Result<VersionVector, Error> {
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

    fn vv(entries: &[(u32, u32, u64)]) -> NodeClock {
        NodeClock::from_vector(&VersionVector::from_entries(
            entries
                .iter()
                .map(|&(n, i, c)| (actor(n, u64::from(i)), c))
                .collect(),
        ))
    }

    #[test]
    fn a_bound_context_names_its_key_and_is_refused_for_another() {
        let c = vv(&[(1, 7, 3), (2, 9, 1)]);
        let token = bound_context_to_token(b"k", &c);
        assert_eq!(
            keyed_context_from_token(&token).unwrap(),
            (c.clone(), Some(key_hash(b"k")))
        );
        assert_eq!(context_from_token_for(b"k", &token).unwrap(), c);
        assert_eq!(context_from_token(&token).unwrap(), c, "binding dropped");
        let refused = context_from_token_for(b"j", &token)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("another key"), "{refused}");
        // Unbound tokens (older clients, hand-made) still pass for any key.
        let unbound = context_to_token(&c);
        assert_eq!(context_from_token_for(b"j", &unbound).unwrap(), c);
        // The empty context binds too: a blind write's context from a read of a missing key.
        let empty = bound_context_to_token(b"k", &NodeClock::new());
        assert!(context_from_token_for(b"j", &empty).is_err());
        // Layout: the format byte, the key hash big-endian, then the unbound encoding.
        let bytes = encode_bound_context(b"k", &c);
        assert_eq!(bytes[0], FORMAT_BOUND);
        assert_eq!(bytes[1..9], key_hash(b"k").to_be_bytes());
        assert_eq!(bytes[9..], encode_context(&c)[..]);
    }

    #[test]
    fn malformed_bindings_are_refused() {
        let h = key_hash(b"k").to_be_bytes();
        let mut nested = vec![FORMAT_BOUND];
        nested.extend(h);
        nested.extend(encode_bound_context(b"k", &NodeClock::new()));
        let mut missing = vec![FORMAT_BOUND];
        missing.extend(h);
        for bad in [
            &[FORMAT_BOUND][..],
            &[FORMAT_BOUND, 1, 2, 3],
            &missing,
            &nested,
        ] {
            assert!(
                matches!(decode_keyed_context(bad), Err(Error::MalformedContext(_))),
                "{bad:?}"
            );
        }
        // A bound token is not a plain binary context.
        assert!(decode_context(&encode_bound_context(b"k", &NodeClock::new())).is_err());
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
        assert_eq!(encode_context(&NodeClock::new()), vec![0xD1, 0]);
    }

    #[test]
    fn empty_inputs_are_the_empty_context() {
        assert!(decode_context(&[]).unwrap().is_empty());
        assert!(decode_context(&[0xD1, 0]).unwrap().is_empty());
        assert!(context_from_token("").unwrap().is_empty());
        let token = context_to_token(&NodeClock::new());
        assert!(context_from_token(&token).unwrap().is_empty());
    }

    #[test]
    fn malformed_binary_names_the_problem() {
        assert!(err(&[0x00, 0]).contains("unknown format byte 0x00"));
        assert!(err(&[0xD3]).contains("unknown format byte"));
        assert!(err(&[0xD2]).contains("truncated"));
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

    /// A context with holes is written as version 2 and reads back the same; the same dots
    /// without the hole are version 1, and a version-2 token without a hole is refused.
    #[test]
    fn a_context_with_holes_is_version_2() {
        let mut ctx = vv(&[(1, 0, 3)]);
        ctx.add(&crate::dvv::Dot::new(actor(1, 0), 6));
        ctx.add_range(actor(2, 5), 4, 5);
        let bytes = encode_context(&ctx);
        // 0xD2, 2 actors; (1, 0) base 3, one range gap 1 length 0; (2, 5) base 0, one range
        // gap 2 length 1.
        assert_eq!(bytes, [0xD2, 2, 1, 0, 3, 1, 1, 0, 2, 5, 0, 1, 2, 1]);
        assert_eq!(decode_context(&bytes).unwrap(), ctx);
        assert_eq!(context_from_token(&context_to_token(&ctx)).unwrap(), ctx);
        assert!(err(&[0xD2, 1, 1, 0, 3, 0]).contains("without a hole"));
        let mut huge = vec![0xD2, 1, 1, 0, 0, 1];
        put_varint(&mut huge, MAX_TOKEN_COUNTER); // gap: the range starts above the limit
        huge.push(0);
        assert!(err(&huge).contains("above the limit"));
        assert!(err(&[0xD2, 1, 1, 0, 3, 1, 1]).contains("truncated"));
    }

    #[test]
    fn too_many_holes_are_refused() {
        let mut ctx = NodeClock::new();
        for k in 0..=MAX_CONTEXT_RANGES as u64 {
            ctx.add(&crate::dvv::Dot::new(actor(1, 0), 2 + 2 * k));
        }
        assert!(err(&encode_context(&ctx)).contains("ranges exceed the limit"));
    }

    fn arb_holes() -> impl Strategy<Value = NodeClock> {
        prop::collection::vec((0u32..6, 1u64..40, 0u64..3), 0..16).prop_map(|dots| {
            let mut c = NodeClock::new();
            for (n, lo, len) in dots {
                c.add_range(actor(n, 0), lo, lo + len);
            }
            c
        })
    }

    fn arb_vv() -> impl Strategy<Value = NodeClock> {
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
        fn contexts_with_holes_round_trip(ctx in arb_holes()) {
            let bytes = encode_context(&ctx);
            prop_assert_eq!(bytes.first() == Some(&FORMAT_V2), ctx.range_count() > 0);
            prop_assert_eq!(decode_context(&bytes).unwrap(), ctx);
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_context(&bytes);
            for format in [FORMAT_V1, FORMAT_V2] {
                let mut framed = vec![format];
                framed.extend(&bytes);
                if let Ok(ctx) = decode_context(&framed) {
                    // Anything accepted is canonical: it re-encodes to the same bytes.
                    prop_assert_eq!(encode_context(&ctx), framed);
                }
            }
        }

        #[test]
        fn decoding_random_text_never_panics(s in ".{0,40}") {
            let _ = context_from_token(&s);
        }
    }
}
