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
//! ```
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

/// The longest text token (base64 of [`MAX_CONTEXT_BYTES`]).
const MAX_TOKEN_CHARS: usize = MAX_CONTEXT_BYTES.div_ceil(3) * 4;

/// Whether `context` is within the token limits ([`MAX_CONTEXT_ENTRIES`] actors and
/// [`MAX_CONTEXT_RANGES`] holes): what a client may send and what a stored object may carry, so
/// every context a read returns can be sent back. `Err` holds `(actors, ranges)`.
pub fn check_context_limits(context: &NodeClock) -> Result<(), (usize, usize)> {
    let (actors, ranges) = (context.actor_count(), context.range_count());
    if actors > MAX_CONTEXT_ENTRIES || ranges > MAX_CONTEXT_RANGES {
        return Err((actors, ranges));
    }
    Ok(())
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
pub fn context_from_token(token: &str) -> Result<NodeClock, Error> {
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
