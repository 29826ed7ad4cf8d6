//! The backup file format (`dynakv backup`): one file per partition, a header and then one
//! checksummed record per key.
//!
//! ```text
//! file   = MAGIC (8 bytes: "DKVBAK" 0x00 0x02, the last byte is the format version)
//!          partition (u16 BE)  record*
//! record = length (u32 BE)  payload (codec-encoded (key, object))  xxh3-64(payload) (8 bytes BE)
//! ```
//! Version 2 stores objects as DCCs. Version-1 files (DVVSets, written before the switch) are
//! still read, and their objects converted exactly.
//!
//! Every record carries its own checksum, so a damaged file names the record that is wrong;
//! the manifest (written by the CLI) also holds each file's xxh3-64, so a truncated or swapped
//! file is caught before anything is restored from it.

use bytes::Bytes;

use super::{decode, encode};
use crate::error::{Error, Result};
use crate::types::Object;

/// The first bytes of every backup file; the last one is the format version (2).
pub const BACKUP_MAGIC: &[u8; 8] = b"DKVBAK\x00\x02";
/// The format version of backups written before objects were DCCs (still read).
const BACKUP_V1: u8 = 1;
/// Bytes of a file header: magic and partition.
pub const BACKUP_HEADER_LEN: usize = 10;
/// Longest record accepted (a key and an object as large as a peer frame allows).
pub const MAX_BACKUP_RECORD: usize = super::DECODE_LIMIT;

/// The header of the file of `partition`.
pub fn backup_header(partition: u16) -> [u8; BACKUP_HEADER_LEN] {
    let mut h = [0u8; BACKUP_HEADER_LEN];
    h[..8].copy_from_slice(BACKUP_MAGIC);
    h[8..].copy_from_slice(&partition.to_be_bytes());
    h
}

/// One record: a key and its stored object.
pub fn encode_backup_record(key: &[u8], object: &Object) -> Result<Vec<u8>> {
    let payload = encode(&(Bytes::copy_from_slice(key), object))?;
    let len = u32::try_from(payload.len())
        .map_err(|_| Error::Encode("backup record over 4 GiB".into()))?;
    let mut out = Vec::with_capacity(payload.len() + 12);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_be_bytes());
    Ok(out)
}

/// Reads a whole backup file: its partition and every record, in order. Any damage (wrong
/// magic or version, a truncated record, a checksum that does not match, an object that is not
/// a valid replica state) is [`Error::Corrupt`] naming the record and its byte offset.
pub fn decode_backup_file(bytes: &[u8]) -> Result<(u16, Vec<(Bytes, Object)>)> {
    let corrupt = |what: String| Error::Corrupt(what);
    if bytes.len() < BACKUP_HEADER_LEN || bytes[..7] != BACKUP_MAGIC[..7] {
        return Err(corrupt("not a dynakv backup file (bad magic)".into()));
    }
    let legacy = bytes[7] == BACKUP_V1;
    if bytes[7] != BACKUP_MAGIC[7] && !legacy {
        return Err(corrupt(format!(
            "backup format version {} (this dynakv reads versions {BACKUP_V1} and {})",
            bytes[7], BACKUP_MAGIC[7]
        )));
    }
    let partition = u16::from_be_bytes([bytes[8], bytes[9]]);
    let mut at = BACKUP_HEADER_LEN;
    let mut items = Vec::new();
    while at < bytes.len() {
        let index = items.len();
        let head = bytes
            .get(at..at + 4)
            .ok_or_else(|| corrupt(format!("record {index} at byte {at}: truncated length")))?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_BACKUP_RECORD {
            return Err(corrupt(format!(
                "record {index} at byte {at}: length {len} over the limit"
            )));
        }
        let payload = bytes
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| corrupt(format!("record {index} at byte {at}: truncated payload")))?;
        let sum = bytes
            .get(at + 4 + len..at + 12 + len)
            .ok_or_else(|| corrupt(format!("record {index} at byte {at}: truncated checksum")))?;
        let want = xxhash_rust::xxh3::xxh3_64(payload).to_be_bytes();
        if sum != want {
            return Err(corrupt(format!(
                "record {index} at byte {at}: checksum mismatch"
            )));
        }
        let item = if legacy {
            decode::<(Bytes, crate::dvv::DvvSet<crate::types::Value>)>(payload)
                .and_then(|(key, set)| Ok((key, Object::from_dvvset(&set)?)))
        } else {
            decode::<(Bytes, Object)>(payload)
        };
        let (key, object) =
            item.map_err(|e| corrupt(format!("record {index} at byte {at}: {e}")))?;
        items.push((key, object));
        at += 12 + len;
    }
    Ok((partition, items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dvv::{Actor, DvvSet, NodeClock};
    use crate::types::Value;
    use dynakv_ring::NodeId;

    fn value(v: &str) -> Value {
        Value::Data(Bytes::from(v.to_string()))
    }

    fn object(v: &str) -> Object {
        let actor = Actor::new(NodeId(1), 9);
        let (o, _) = Object::update(&Object::new(), &NodeClock::new(), actor, value(v))
            .expect("a first dot");
        o
    }

    fn file(items: &[(&str, &str)]) -> Vec<u8> {
        let mut out = backup_header(7).to_vec();
        for (k, v) in items {
            out.extend(encode_backup_record(k.as_bytes(), &object(v)).expect("encodes"));
        }
        out
    }

    #[test]
    fn a_file_round_trips() {
        let bytes = file(&[("a", "1"), ("b", "2")]);
        let (p, items) = decode_backup_file(&bytes).expect("decodes");
        assert_eq!(p, 7);
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].0, Bytes::from_static(b"b"));
        assert_eq!(items[1].1, object("2"));
        let (_, none) = decode_backup_file(&backup_header(3)).expect("an empty partition");
        assert!(none.is_empty());
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_caught() {
        let bytes = file(&[("a", "1"), ("bb", "22")]);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                // A flip in the partition number still decodes (the manifest's file checksum
                // catches it); any other flip is an error.
                if (8..10).contains(&i) {
                    continue;
                }
                assert!(decode_backup_file(&bad).is_err(), "byte {i} bit {bit}");
            }
        }
        for cut in BACKUP_HEADER_LEN + 1..bytes.len() {
            let short = &bytes[..cut];
            if let Ok((_, items)) = decode_backup_file(short) {
                assert!(items.len() < 2, "cut at {cut} kept every record");
            }
        }
        let err = decode_backup_file(&bytes[..bytes.len() - 3]).expect_err("truncated");
        assert!(err.to_string().contains("record 1"), "{err}");
    }

    /// Backups taken before objects were DCCs still restore: a version-1 file's DVVSets become
    /// the same objects.
    #[test]
    fn a_version_1_file_still_reads() {
        let set = DvvSet::update(
            DvvSet::new(value("1")),
            &DvvSet::empty(),
            Actor::new(NodeId(1), 9),
        );
        let payload = encode(&(Bytes::from_static(b"a"), &set)).expect("encodes");
        let mut bytes = backup_header(7).to_vec();
        bytes[7] = BACKUP_V1;
        bytes.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_be_bytes());
        let (_, items) = decode_backup_file(&bytes).expect("a version-1 file");
        assert_eq!(items, vec![(Bytes::from_static(b"a"), object("1"))]);
        bytes[7] = 3;
        let err = decode_backup_file(&bytes).expect_err("an unknown version");
        assert!(err.to_string().contains("format version 3"), "{err}");
    }
}
