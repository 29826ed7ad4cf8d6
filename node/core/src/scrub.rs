//! The background scrub: every stored record of the partitions this node replicates is read
//! and checked (checksum, decoding, replica-state validity) at a bounded rate, so a record the
//! disk corrupted is found, set aside and repaired from the other replicas (anti-entropy) even
//! if no client reads it, before a second fault can hit the same key elsewhere.
//!
//! Input: the maintenance tick ([`Scrub::tick`]), `scrub_per_sec` records per second at most
//! (0 turns it off). A found record goes to [`Ctx::set_aside_corrupt`] through `Ctx::corrupt`.

use bytes::Bytes;
use dynakv_proto::codec;

use super::ctx::Ctx;
use crate::store::{Space, Store};

/// Where the walk is: the index into the node's partitions and the last key checked there.
#[derive(Debug, Default)]
pub(super) struct Scrub {
    partition: usize,
    after: Option<Vec<u8>>,
}

impl Scrub {
    /// Check up to `scrub_per_sec * tick_ms / 1000` records (at least one) from where the last
    /// tick stopped, moving to the next partition at the end of one and starting over after
    /// the last.
    pub(super) fn tick<S: Store>(&mut self, ctx: &mut Ctx<S>) {
        let per_sec = u64::from(ctx.cfg.scrub_per_sec);
        if per_sec == 0 || ctx.mine.is_empty() {
            return;
        }
        let mut left = (per_sec * u64::from(ctx.cfg.tick_ms) / 1000).max(1) as usize;
        // Each partition at most once per tick: a node with few records does not spin.
        for _ in 0..=ctx.mine.len() {
            if left == 0 {
                break;
            }
            let p = ctx.mine[self.partition % ctx.mine.len()];
            let mut found = Vec::new();
            let mut checked = 0u64;
            let visited = ctx.store.visit(
                Space::Partition(p),
                self.after.as_deref(),
                left,
                &mut |k, v| {
                    checked += 1;
                    if let Err(e) = codec::verify_record(v) {
                        found.push((p, Bytes::copy_from_slice(k), e.to_string()));
                    }
                },
            );
            let (seen, last) = match visited {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(partition = %p, error = %e, "scrub cannot read the partition");
                    return;
                }
            };
            ctx.stats.scrubbed_records += checked;
            ctx.corrupt.get_mut().extend(found);
            if seen < left {
                self.partition = (self.partition + 1) % ctx.mine.len();
                self.after = None;
            } else {
                self.after = last;
            }
            left -= seen;
        }
    }
}
