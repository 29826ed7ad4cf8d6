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

/// Version byte of records written before records carried a checksum (still read).
const RECORD_V1: u8 = 1;
/// Version byte of every record written now: `2 ‖ payload ‖ checksum`, where the checksum is
/// the xxh3-64 of the version byte and the payload, 8 bytes little-endian.
const RECORD_V2: u8 = 2;
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
    let mut out = vec![RECORD_V2];
    out.extend(encode(object)?);
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Check an object that came from the network or the disk: a valid DVVSet, and a replica state
/// (every value carries a dot: anonymous values exist only inside a coordinator's update, and
/// one arriving from outside could never be superseded by a client).
pub fn check_replica_object(object: &Object) -> Result<()> {
    object.validate()?;
    if object.dotted_values().iter().any(|(dot, _)| dot.is_none()) {
        return Err(Error::Decode("object holds values without a dot".into()));
    }
    Ok(())
}

/// Check a stored record without decoding it, as the background scrub does: a version-2
/// record's checksum (cheap: one hash over the bytes); an older record is decoded and
/// validated in full.
pub fn verify_record(bytes: &[u8]) -> Result<()> {
    match bytes.split_first() {
        Some((&RECORD_V2, _)) => checked_body(bytes).map(|_| ()),
        _ => decode_object(bytes).map(|_| ()),
    }
}

/// A version-2 record's version byte and payload, once its checksum matched.
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

/// Decode and validate a stored object (a checksum mismatch is [`Error::Corrupt`]).
pub fn decode_object(bytes: &[u8]) -> Result<Object> {
    match bytes.split_first() {
        Some((&RECORD_V2, _)) => {
            let body = checked_body(bytes)?;
            let object: Object = decode(&body[1..])?;
            check_replica_object(&object)?;
            Ok(object)
        }
        Some((&RECORD_V1, rest)) => {
            let object: Object = decode(rest)?;
            check_replica_object(&object)?;
            Ok(object)
        }
        Some((v, _)) => Err(Error::Decode(format!("unknown record version {v}"))),
        None => Err(Error::Decode("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Value;

    #[test]
    fn object_round_trip_and_garbage() -> Result<()> {
        let actor = crate::dvv::Actor {
            node: dynakv_ring::NodeId(1),
            incarnation: 7,
        };
        let anonymous = Object::new(Value::Data(bytes::Bytes::from_static(b"hello")));
        let o = Object::update(anonymous.clone(), &Object::empty(), actor);
        let b = encode_object(&o)?;
        assert_eq!(decode_object(&b)?, o);
        // A value without a dot is not a replica state: refused from disk or network.
        assert!(decode_object(&encode_object(&anonymous)?).is_err());
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
        let actor = crate::dvv::Actor {
            node: dynakv_ring::NodeId(1),
            incarnation: 7,
        };
        let o = Object::update(
            Object::new(Value::Data(bytes::Bytes::from_static(b"hello"))),
            &Object::empty(),
            actor,
        );
        let b = encode_object(&o)?;
        assert_eq!(b[0], RECORD_V2);
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
        // Records written before checksums still read.
        let mut v1 = vec![RECORD_V1];
        v1.extend(encode(&o)?);
        assert_eq!(decode_object(&v1)?, o);
        Ok(())
    }
}
