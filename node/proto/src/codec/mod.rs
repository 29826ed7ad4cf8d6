//! Encoding and decoding: the one module that knows the wire and disk formats.
//!
//! Everything that turns a value into bytes goes through here, so the codec (bincode 2 with its
//! serde support today) can be swapped in one place. Decoding never trusts its input: sizes are
//! bounded before allocation, trailing bytes are an error, and decoded objects are validated.

pub mod backup;
pub mod clock;
pub mod token;
mod varint;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};
use crate::types::Object;

/// Largest message the decoder will materialise; bincode refuses length prefixes beyond it
/// instead of allocating.
pub const DECODE_LIMIT: usize = 64 << 20;

/// Version byte of the first records: a bincode DVVSet, no checksum (still read, converted).
const RECORD_V1: u8 = 1;
/// Version byte of checksummed DVVSet records: `2 ‖ payload ‖ checksum` (still read, converted).
const RECORD_V2: u8 = 2;
/// Version byte of every record written now: `3 ‖ payload ‖ checksum`, the payload a bincode
/// [`crate::dvv::Dcc`], the checksum the xxh3-64 of the version byte and the payload, 8 bytes
/// little-endian.
const RECORD_V3: u8 = 3;
/// Bytes of a record's checksum.
const CHECKSUM_LEN: usize = 8;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encode any serde value with the project's codec.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| Error::Encode(e.to_string()))
}

/// Decode a value encoded by [`encode`]; the whole input must be consumed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| Error::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(Error::Decode(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Encode a stored object (a record on disk).
pub fn encode_object(object: &Object) -> Result<Vec<u8>> {
    let mut out = vec![RECORD_V3];
    out.extend(encode(object)?);
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Check a stored record without decoding it, as the background scrub does: a checksummed
/// record's checksum (cheap: one hash over the bytes); a version-1 record is decoded in full.
pub fn verify_record(bytes: &[u8]) -> Result<()> {
    match bytes.split_first() {
        Some((&RECORD_V2 | &RECORD_V3, _)) => checked_body(bytes).map(|_| ()),
        _ => decode_object(bytes).map(|_| ()),
    }
}

/// A checksummed record's version byte and payload, once its checksum matched.
fn checked_body(bytes: &[u8]) -> Result<&[u8]> {
    let Some(split) = bytes.len().checked_sub(CHECKSUM_LEN).filter(|s| *s > 0) else {
        return Err(Error::Corrupt("record shorter than its checksum".into()));
    };
    let (body, sum) = bytes.split_at(split);
    let stored = u64::from_le_bytes(
        sum.try_into()
            .map_err(|_| Error::Corrupt("record shorter than its checksum".into()))?,
    );
    if xxhash_rust::xxh3::xxh3_64(body) != stored {
        return Err(Error::Corrupt("record checksum mismatch".into()));
    }
    Ok(body)
}

/// Decodes an object in the format before DCCs (a DVVSet) and converts it exactly (records of
/// versions 1 and 2).
fn decode_legacy_object(payload: &[u8]) -> Result<Object> {
    let set: crate::dvv::DvvSet<crate::types::Value> = decode(payload)?;
    Object::from_dvvset(&set)
}

/// Decode and validate a stored object (a checksum mismatch is [`Error::Corrupt`]). Records
/// written before DCCs are converted on the fly; the next write of the key rewrites them.
pub fn decode_object(bytes: &[u8]) -> Result<Object> {
    match bytes.split_first() {
        Some((&RECORD_V3, _)) => decode(&checked_body(bytes)?[1..]),
        Some((&RECORD_V2, _)) => decode_legacy_object(&checked_body(bytes)?[1..]),
        Some((&RECORD_V1, rest)) => decode_legacy_object(rest),
        Some((v, _)) => Err(Error::Decode(format!("unknown record version {v}"))),
        None => Err(Error::Decode("empty record".into())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dvv::{Actor, DvvSet, NodeClock};
    use crate::types::Value;

    fn actor() -> Actor {
        Actor::new(dynakv_ring::NodeId(1), 7)
    }

    fn hello() -> Object {
        let (o, _) = Object::update(
            &Object::new(),
            &NodeClock::new(),
            actor(),
            Value::Data(bytes::Bytes::from_static(b"hello")),
        )
        .unwrap();
        o
    }

    #[test]
    fn object_round_trip_and_garbage() -> Result<()> {
        let o = hello();
        let b = encode_object(&o)?;
        assert_eq!(b[0], RECORD_V3);
        assert_eq!(decode_object(&b)?, o);
        assert!(decode_object(&[]).is_err());
        assert!(decode_object(&[9, 1, 2]).is_err());
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(decode_object(&trailing).is_err());
        Ok(())
    }

    /// Every stored record carries a checksum: any flipped bit, a truncation or a record cut
    /// to its checksum is reported as corruption, never decoded into another object.
    #[test]
    fn a_corrupted_record_is_reported_not_decoded() -> Result<()> {
        let b = encode_object(&hello())?;
        verify_record(&b)?;
        for i in 1..b.len() {
            for bit in 0..8 {
                let mut bad = b.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    matches!(decode_object(&bad), Err(Error::Corrupt(_))),
                    "byte {i} bit {bit}"
                );
                assert!(verify_record(&bad).is_err(), "byte {i} bit {bit}");
            }
        }
        assert!(matches!(
            decode_object(&b[..b.len() - 1]),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            decode_object(&b[..CHECKSUM_LEN]),
            Err(Error::Corrupt(_))
        ));
        Ok(())
    }

    /// Data directories written before DCCs still read: DVVSet records of versions 1 and 2
    /// become the same object, and a client-built set (a value without a dot) is refused.
    #[test]
    fn records_written_before_dccs_convert_exactly() -> Result<()> {
        let value = Value::Data(bytes::Bytes::from_static(b"hello"));
        let set = DvvSet::update(DvvSet::new(value.clone()), &DvvSet::empty(), actor());
        let mut v1 = vec![RECORD_V1];
        v1.extend(encode(&set)?);
        assert_eq!(decode_object(&v1)?, hello());
        let mut v2 = vec![RECORD_V2];
        v2.extend(encode(&set)?);
        let sum = xxhash_rust::xxh3::xxh3_64(&v2);
        v2.extend_from_slice(&sum.to_le_bytes());
        verify_record(&v2)?;
        assert_eq!(decode_object(&v2)?, hello());
        let mut anonymous = vec![RECORD_V1];
        anonymous.extend(encode(&DvvSet::new(value))?);
        assert!(decode_object(&anonymous).is_err());
        Ok(())
    }
}
