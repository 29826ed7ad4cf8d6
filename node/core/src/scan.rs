//! Answering [`ClientRequest::Scan`](super::types::ClientRequest::Scan): one page of the keys a
//! node stores for a partition it replicates, as stored. `dynakv backup` reads every replica
//! of every partition this way and merges what they hold, so a backup misses no write that
//! reached any primary.

use bytes::Bytes;
use dynakv_ring::PartitionId;

use super::ctx::Ctx;
use super::types::{ClientReply, RequestError, ScanReply};
use crate::codec;
use crate::store::{Space, Store};

/// Keys per page at most, whatever the client asks.
pub const MAX_SCAN_PAGE: u32 = 1024;

/// One page of partition `p` after `after`: up to `limit` keys (at most [`MAX_SCAN_PAGE`]) and
/// about half a peer frame of bytes, so the reply always fits a client frame. A record that
/// fails its checksum is left out and set aside as on every other path (the other replicas
/// repair it; the backup reads them too).
pub(super) fn scan_page<S: Store>(
    ctx: &mut Ctx<S>,
    p: PartitionId,
    after: Option<&[u8]>,
    limit: u32,
) -> ClientReply {
    let n = usize::from(ctx.cfg.n);
    if p.0 >= ctx.map.partition_count() || !ctx.map.preference_list(p, n).contains(&ctx.id()) {
        return ClientReply::Error(RequestError::NotReplica {
            node: ctx.id(),
            partition: p,
        });
    }
    let limit = limit.clamp(1, MAX_SCAN_PAGE) as usize;
    let page = match ctx.store.scan(Space::Partition(p), after, limit) {
        Ok(page) => page,
        Err(e) => return ClientReply::Error(RequestError::Storage(e.to_string())),
    };
    let full = page.len() == limit;
    let budget = ctx.cfg.max_message_bytes / 2;
    let mut bytes = 0usize;
    let mut items = Vec::new();
    let mut last = None;
    for (k, v) in page {
        if bytes > 0 && bytes + k.len() + v.len() > budget {
            // The rest goes in the next page.
            return ClientReply::Scanned(ScanReply { items, next: last });
        }
        bytes += k.len() + v.len();
        let key = Bytes::from(k);
        match codec::decode_object(&v) {
            Ok(object) => items.push((key.clone(), object)),
            Err(e) => ctx.corrupt.get_mut().push((p, key.clone(), e.to_string())),
        }
        last = Some(key);
    }
    ctx.set_aside_corrupt();
    ClientReply::Scanned(ScanReply {
        items,
        next: if full { last } else { None },
    })
}
