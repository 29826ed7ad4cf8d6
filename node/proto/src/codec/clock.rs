//! The compact binary form of a [`NodeClock`], for the disk and for clock exchanges between
//! replicas.
//!
//! # Format (version 1)
//! ```text
//! byte 0        CLOCK_V1 (0xC1)
//! varint        number of actors (at most MAX_CLOCK_ACTORS)
//! per actor     varint node id (u32), varint incarnation (u64), varint base,
//!               varint number of ranges (at most MAX_CLOCK_RANGES), then per range:
//!               varint gap, varint length
//! ```
//! A range is stored relative to the end of what precedes it (`floor` = base, then each range's
//! `hi`): `lo = floor + 2 + gap`, `hi = lo + length`. So ranges are sorted, disjoint and never
//! adjacent by construction. Actors are strictly increasing, entries are never empty, counters
//! stay within [`MAX_COUNTER`], and varints are minimal ([`super::varint`]): every clock has
//! exactly one encoding. A peer's clock is untrusted: decoding checks all of it and never panics.

use dynakv_ring::NodeId;

use super::varint::{put_varint, Reader};
use crate::dvv::{Actor, ClockEntry, NodeClock, MAX_COUNTER};
use crate::error::Error;

/// The first byte of an encoded clock: magic and format version in one.
pub const CLOCK_V1: u8 = 0xC1;

/// The most actors a clock may hold (as many as a context token).
pub const MAX_CLOCK_ACTORS: usize = 4096;

/// The most out-of-order ranges one actor's entry may hold.
pub const MAX_CLOCK_RANGES: usize = 65_536;

/// Encodes a clock (see the module docs).
pub fn encode_clock(clock: &NodeClock) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + clock.actor_count() * 8 + clock.range_count() * 2);
    out.push(CLOCK_V1);
    put_varint(&mut out, len_u64(clock.actor_count()));
    for (actor, e) in clock.entries() {
        put_varint(&mut out, u64::from(actor.node.0));
        put_varint(&mut out, actor.incarnation);
        put_varint(&mut out, e.base());
        put_varint(&mut out, len_u64(e.ranges().len()));
        let mut floor = e.base();
        for &(lo, hi) in e.ranges() {
            // Normal form guarantees lo >= floor + 2 and hi >= lo.
            put_varint(&mut out, lo.saturating_sub(floor).saturating_sub(2));
            put_varint(&mut out, hi.saturating_sub(lo));
            floor = hi;
        }
    }
    out
}

/// Decodes a clock made by [`encode_clock`].
///
/// Fails with [`Error::Decode`] on a wrong format byte, truncation, trailing bytes, a varint that
/// overflows or is not minimal, too many actors or ranges, actors out of order or repeated, an
/// empty entry, and counters above [`MAX_COUNTER`].
pub fn decode_clock(bytes: &[u8]) -> Result<NodeClock, Error> {
    decode(bytes).map_err(|e| e.within("node clock"))
}

fn decode(bytes: &[u8]) -> Result<NodeClock, Error> {
    let Some((&format, rest)) = bytes.split_first() else {
        return Err(Error::Decode("empty input".into()));
    };
    if format != CLOCK_V1 {
        return Err(Error::Decode(format!(
            "unknown format byte {format:#04x} (expected {CLOCK_V1:#04x})"
        )));
    }
    let mut r = Reader::new(rest, 1);
    let count = bounded(
        r.varint("actor count", u64::MAX)?,
        MAX_CLOCK_ACTORS,
        "actors",
    )?;
    // Every actor takes at least 4 bytes: never allocate more than the input can fill.
    let mut entries: Vec<(Actor, ClockEntry)> = Vec::with_capacity(count.min(r.rest.len() / 4));
    for i in 0..count {
        let node = r.varint("node id", u64::from(u32::MAX))?;
        let incarnation = r.varint("incarnation", u64::MAX)?;
        let node = NodeId(
            u32::try_from(node).map_err(|_| Error::Decode("node id overflows 32 bits".into()))?,
        );
        let actor = Actor::new(node, incarnation);
        if let Some((prev, _)) = entries.last() {
            if *prev >= actor {
                return Err(Error::Decode(format!(
                    "actor {i} is repeated or out of order"
                )));
            }
        }
        let base = r.varint("base", MAX_COUNTER)?;
        let n = bounded(
            r.varint("range count", u64::MAX)?,
            MAX_CLOCK_RANGES,
            "ranges",
        )?;
        let mut ranges = Vec::with_capacity(n.min(r.rest.len() / 2));
        let mut floor = base;
        for _ in 0..n {
            let gap = r.varint("range gap", MAX_COUNTER)?;
            let length = r.varint("range length", MAX_COUNTER)?;
            let lo = floor
                .checked_add(2)
                .and_then(|x| x.checked_add(gap))
                .filter(|&x| x <= MAX_COUNTER);
            let hi = lo
                .and_then(|lo| lo.checked_add(length))
                .filter(|&x| x <= MAX_COUNTER);
            let (Some(lo), Some(hi)) = (lo, hi) else {
                return Err(Error::Decode(format!(
                    "actor {i} has a range above the counter limit"
                )));
            };
            ranges.push((lo, hi));
            floor = hi;
        }
        let entry = ClockEntry::new(base, ranges)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| Error::Decode(format!("actor {i} has an empty entry")))?;
        entries.push((actor, entry));
    }
    if !r.rest.is_empty() {
        return Err(Error::Decode(format!(
            "{} trailing bytes after the clock",
            r.rest.len()
        )));
    }
    NodeClock::from_entries(entries)
        .ok_or_else(|| Error::Decode("entries are not in normal form".into()))
}

fn bounded(value: u64, max: usize, what: &str) -> Result<usize, Error> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v <= max)
        .ok_or_else(|| Error::Decode(format!("{value} {what} exceed the limit of {max}")))
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dvv::Dot;

    fn actor(n: u32) -> Actor {
        Actor::new(NodeId(n), 9)
    }

    #[test]
    fn known_encoding() {
        let mut c = NodeClock::new();
        c.add_range(actor(1), 1, 3);
        c.add(&Dot::new(actor(1), 6));
        c.add_range(actor(2), 4, 5);
        let bytes = encode_clock(&c);
        // 0xC1, 2 actors; (1, 9) base 3, one range gap 1 length 0; (2, 9) base 0, one range
        // gap 2 length 1.
        assert_eq!(bytes, [0xC1, 2, 1, 9, 3, 1, 1, 0, 2, 9, 0, 1, 2, 1]);
        assert_eq!(decode_clock(&bytes).unwrap(), c);
        assert_eq!(
            decode_clock(&encode_clock(&NodeClock::new())).unwrap(),
            NodeClock::new()
        );
    }

    #[test]
    fn malformed_clocks_name_the_problem() {
        let err = |b: &[u8]| decode_clock(b).unwrap_err().to_string();
        assert!(err(&[]).contains("empty input"));
        assert!(err(&[0xC2, 0]).contains("unknown format byte"));
        assert!(err(&[0xC1, 1, 1, 9, 3]).contains("truncated"));
        assert!(err(&[0xC1, 0, 0]).contains("trailing bytes"));
        assert!(err(&[0xC1, 1, 1, 9, 0, 0]).contains("empty entry"));
        assert!(err(&[0xC1, 2, 1, 9, 1, 0, 1, 9, 1, 0]).contains("out of order"));
        assert!(err(&[0xC1, 0x80, 0x00]).contains("non-minimal"));
        assert!(err(&[0xC1, 0xff, 0xff, 0x01]).contains("exceed the limit"));
        // base = MAX_COUNTER, then a range above it.
        let mut b = vec![0xC1, 1, 1, 9];
        put_varint(&mut b, MAX_COUNTER);
        b.extend([1, 0, 0]);
        assert!(err(&b).contains("above the counter limit"));
    }
}
