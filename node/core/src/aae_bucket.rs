//! The keys of one anti-entropy bucket and their object hashes, packed in one buffer.
//!
//! A tree holds every key of its partition, so its per-key cost is the node's per-key memory: a
//! `BTreeMap<Bytes, u64>` costs about 100 bytes per key (a `Bytes` handle, a heap copy of the
//! key, the map's node slack). Here each entry is its key's length (LEB128), the key, and the
//! hash (8 bytes, little-endian), kept sorted by key in one `Vec<u8>`: about `key + 9` bytes.
//! Buckets are small (a partition's keys spread over 1,024 of them), so the linear search and
//! the `memmove` of an insert cost less than a map's pointer chasing.

use std::cmp::Ordering;

use bytes::Bytes;

/// One bucket's `(key, object hash)` entries, sorted by key.
#[derive(Debug, Clone, Default)]
pub(super) struct Bucket {
    bytes: Vec<u8>,
    len: u32,
}

/// One decoded entry: where it starts and ends in the buffer, its key and its hash.
struct Entry<'a> {
    start: usize,
    end: usize,
    key: &'a [u8],
    hash: u64,
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

impl Bucket {
    /// Number of keys.
    pub(super) fn len(&self) -> usize {
        self.len as usize
    }

    /// The entry starting at `start`. The buffer is written only by `insert`, so it always
    /// decodes; a short buffer ends the iteration instead of panicking.
    fn entry_at(&self, start: usize) -> Option<Entry<'_>> {
        let mut pos = start;
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = *self.bytes.get(pos)?;
            pos += 1;
            len |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let key = self.bytes.get(pos..pos + len)?;
        let hash_bytes: [u8; 8] = self.bytes.get(pos + len..pos + len + 8)?.try_into().ok()?;
        Some(Entry {
            start,
            end: pos + len + 8,
            key,
            hash: u64::from_le_bytes(hash_bytes),
        })
    }

    fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        let mut pos = 0;
        std::iter::from_fn(move || {
            let e = self.entry_at(pos)?;
            pos = e.end;
            Some(e)
        })
    }

    /// Set `key`'s hash; the previous one, if the key was there.
    pub(super) fn insert(&mut self, key: &[u8], hash: u64) -> Option<u64> {
        let mut at = self.bytes.len();
        let mut found = None;
        for e in self.entries() {
            match e.key.cmp(key) {
                Ordering::Less => continue,
                Ordering::Equal => {
                    found = Some((e.end, e.hash));
                    break;
                }
                Ordering::Greater => {
                    at = e.start;
                    break;
                }
            }
        }
        if let Some((end, old)) = found {
            self.bytes[end - 8..end].copy_from_slice(&hash.to_le_bytes());
            return Some(old);
        }
        let mut entry = Vec::with_capacity(key.len() + 10);
        put_len(&mut entry, key.len());
        entry.extend_from_slice(key);
        entry.extend_from_slice(&hash.to_le_bytes());
        self.bytes.splice(at..at, entry);
        self.len += 1;
        None
    }

    /// Remove `key`; its hash, if it was there.
    pub(super) fn remove(&mut self, key: &[u8]) -> Option<u64> {
        let (start, end, hash) = self
            .entries()
            .take_while(|e| e.key <= key)
            .find(|e| e.key == key)
            .map(|e| (e.start, e.end, e.hash))?;
        self.bytes.drain(start..end);
        self.len -= 1;
        if self.bytes.capacity() > 2 * self.bytes.len() + 64 {
            self.bytes.shrink_to_fit();
        }
        Some(hash)
    }

    /// Every `(key, hash)`, in key order.
    pub(super) fn to_vec(&self) -> Vec<(Bytes, u64)> {
        self.entries()
            .map(|e| (Bytes::copy_from_slice(e.key), e.hash))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The bucket behaves as a `BTreeMap<key, hash>` under any sequence of inserts and
        /// removes, keys of any length included (a long key takes a multi-byte length).
        #[test]
        fn behaves_like_a_sorted_map(
            ops in prop::collection::vec(
                (any::<bool>(), prop::collection::vec(any::<u8>(), 0..4), any::<u64>(), 0usize..3),
                0..200,
            )
        ) {
            let mut bucket = Bucket::default();
            let mut model: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            for (insert, mut key, hash, long) in ops {
                if long == 0 {
                    key.resize(200, 7);
                }
                if insert {
                    prop_assert_eq!(bucket.insert(&key, hash), model.insert(key, hash));
                } else {
                    prop_assert_eq!(bucket.remove(&key), model.remove(&key));
                }
                prop_assert_eq!(bucket.len(), model.len());
            }
            let want: Vec<(Bytes, u64)> = model.into_iter().map(|(k, h)| (Bytes::from(k), h)).collect();
            prop_assert_eq!(bucket.to_vec(), want);
        }
    }
}
