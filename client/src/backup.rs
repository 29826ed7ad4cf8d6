//! The two requests behind `dynakv backup` and `dynakv restore` (both need the admin role):
//! reading one page of a partition as one replica stores it, and merging a stored object back
//! into a key without minting a new version.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dynakv_proto::{ClientReply, ClientRequest};
use dynakv_ring::PartitionId;

use crate::error::ClientError;
use crate::send::{unexpected, Failover};
use crate::{Answered, Client, Options, PutReply, ScanReply, StoredObject};

/// How long a scan page may take (one node reads its own store).
const SCAN_WAIT: Duration = Duration::from_secs(30);

impl Client {
    /// One page of the keys `node` stores for `partition` (one of its replicas), as stored:
    /// every sibling, tombstones, the causal context. `after`: the previous page's `next`.
    /// Goes to `node` only (never another), since a backup must hear every replica.
    pub async fn scan_page(
        &self,
        node: SocketAddr,
        partition: PartitionId,
        after: Option<Bytes>,
        limit: u32,
    ) -> Result<ScanReply, ClientError> {
        let request = ClientRequest::Scan {
            partition,
            after,
            limit,
        };
        let answered = self
            .core(vec![node], request, SCAN_WAIT, Failover::BeforeSend)
            .await?;
        match answered.reply {
            ClientReply::Scanned(page) => Ok(page),
            other => Err(unexpected(answered.node, &other)),
        }
    }

    /// Merges `object` (from a backup) into `key` on its replicas, as anti-entropy merges:
    /// nothing new is minted, newer versions the cluster holds stay, and what a stored delete
    /// covers stays deleted. Acknowledged by W replicas like a put; safe to repeat.
    pub async fn restore(
        &self,
        key: &[u8],
        object: StoredObject,
        opts: Options,
    ) -> Result<Answered<PutReply>, ClientError> {
        let request = ClientRequest::Restore {
            key: Bytes::copy_from_slice(key),
            object,
            opts: opts.request(),
        };
        self.write(key, request, opts).await
    }
}
