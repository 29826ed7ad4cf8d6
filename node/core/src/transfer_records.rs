//! The persisted records of partition transfers (both sides' checkpoints, in the store's
//! `transfers` space) and their keys; records written before transfers had passes are still
//! read (`decode_outgoing`, `decode_incoming`).

use dynakv_ring::{NodeId, PartitionId};
use serde::{Deserialize, Serialize};

use crate::codec;

/// A transfer this node sends, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingTransfer {
    pub partition: PartitionId,
    pub to: NodeId,
    /// Last key the receiver acknowledged; the next batch starts after it.
    pub cursor: Option<Vec<u8>>,
    /// Keys acknowledged so far.
    pub sent: u64,
    /// Keys in the partition when the transfer started (progress figure).
    pub total: u64,
    /// Keys sent again after a failed or unanswered batch.
    pub resent: u64,
    pub done: bool,
    /// The pass under way (see [`TransferMsg::Batch`]); drawn with its snapshot.
    pub pass: u64,
}

/// A transfer this node receives, as persisted (its checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingTransfer {
    pub partition: PartitionId,
    pub from: NodeId,
    /// Last key merged durably, in pass `pass`.
    pub checkpoint: Option<Vec<u8>>,
    pub received: u64,
    pub done: bool,
    /// The pass the checkpoint belongs to (0: none seen yet).
    pub pass: u64,
}

/// The records as written before transfers had passes (protocol 11): read at start, so a
/// node restarted on a newer build finishes them (pass 0; a receiver's checkpoint is dropped,
/// so its sender streams the partition again from the first key).
#[derive(Deserialize)]
struct OutgoingV11 {
    partition: PartitionId,
    to: NodeId,
    cursor: Option<Vec<u8>>,
    sent: u64,
    total: u64,
    resent: u64,
    done: bool,
}

#[derive(Deserialize)]
struct IncomingV11 {
    partition: PartitionId,
    from: NodeId,
    // Read to consume the record's bytes; dropped (see `decode_incoming`).
    _checkpoint: Option<Vec<u8>>,
    received: u64,
    done: bool,
}

pub(super) fn decode_outgoing(bytes: &[u8]) -> crate::Result<OutgoingTransfer> {
    let e = match codec::decode::<OutgoingTransfer>(bytes) {
        Ok(rec) => return Ok(rec),
        Err(e) => e,
    };
    let old: OutgoingV11 = codec::decode(bytes).map_err(|_| e)?;
    Ok(OutgoingTransfer {
        partition: old.partition,
        to: old.to,
        cursor: old.cursor,
        sent: old.sent,
        total: old.total,
        resent: old.resent,
        done: old.done,
        pass: 0,
    })
}

pub(super) fn decode_incoming(bytes: &[u8]) -> crate::Result<IncomingTransfer> {
    let e = match codec::decode::<IncomingTransfer>(bytes) {
        Ok(rec) => return Ok(rec),
        Err(e) => e,
    };
    let old: IncomingV11 = codec::decode(bytes).map_err(|_| e)?;
    Ok(IncomingTransfer {
        partition: old.partition,
        from: old.from,
        // Not resumed: the older version may have marked a gap in this pass (kept apart, and
        // no longer read), so the sender's next batch gets `start_over` and a whole new pass.
        checkpoint: None,
        received: old.received,
        done: old.done,
        pass: 0,
    })
}

impl IncomingTransfer {
    /// A transfer of `partition` from `from` that has not started.
    pub fn new(partition: PartitionId, from: NodeId) -> Self {
        IncomingTransfer {
            partition,
            from,
            checkpoint: None,
            received: 0,
            done: false,
            pass: 0,
        }
    }
}

pub(super) fn out_key(p: PartitionId, to: NodeId) -> Vec<u8> {
    let mut k = b"out".to_vec();
    k.extend_from_slice(&p.0.to_be_bytes());
    k.extend_from_slice(&to.0.to_be_bytes());
    k
}

pub(super) fn in_key(p: PartitionId, from: NodeId) -> Vec<u8> {
    let mut k = b"in".to_vec();
    k.extend_from_slice(&p.0.to_be_bytes());
    k.extend_from_slice(&from.0.to_be_bytes());
    k
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A node restarted on this build finishes the transfers an older one recorded (pass 0).
    #[test]
    fn records_written_before_passes_are_read_with_pass_zero() {
        #[derive(Serialize)]
        struct Old(PartitionId, NodeId, Option<Vec<u8>>, u64, u64, u64, bool);
        let old = codec::encode(&Old(
            PartitionId(3),
            NodeId(2),
            Some(b"k".to_vec()),
            4,
            9,
            1,
            false,
        ))
        .unwrap();
        let rec = decode_outgoing(&old).unwrap();
        assert_eq!(
            (
                rec.partition,
                rec.to,
                rec.cursor.as_deref(),
                rec.sent,
                rec.total,
                rec.pass
            ),
            (PartitionId(3), NodeId(2), Some(&b"k"[..]), 4, 9, 0)
        );
        #[derive(Serialize)]
        struct OldIn(PartitionId, NodeId, Option<Vec<u8>>, u64, bool);
        let old = codec::encode(&OldIn(PartitionId(3), NodeId(2), None, 5, true)).unwrap();
        let rec = decode_incoming(&old).unwrap();
        assert_eq!((rec.received, rec.done, rec.pass), (5, true, 0));
        let old = codec::encode(&OldIn(
            PartitionId(3),
            NodeId(2),
            Some(b"k".to_vec()),
            5,
            false,
        ))
        .unwrap();
        assert_eq!(
            decode_incoming(&old).unwrap().checkpoint,
            None,
            "a pass is not resumed"
        );
        // Records of this build keep their pass; garbage is an error, not a default.
        let mut now = rec.clone();
        now.pass = 77;
        assert_eq!(decode_incoming(&codec::encode(&now).unwrap()).unwrap(), now);
        assert!(decode_incoming(b"\xff\xff").is_err());
    }
}
