//! Settings of the core, with the cluster defaults and the limits that protect a node.

use dynakv_ring::NodeId;
use serde::{Deserialize, Serialize};

/// Defaults and limits for one node's core. The cluster-wide quorum settings (N, R, W) are the
/// defaults every request gets unless it overrides them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreConfig {
    /// This node's id (fixed for the node's life; its data directory remembers it).
    pub node: NodeId,
    /// Replicas per key.
    pub n: u8,
    /// Replies a get waits for.
    pub r: u8,
    /// Acknowledgements a put/delete waits for.
    pub w: u8,
    /// Default request timeout.
    pub request_timeout_ms: u32,
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Longest value accepted.
    pub max_value_bytes: usize,
    /// Siblings per key past which a warning is logged and counted in status.
    pub sibling_warn: u32,
    /// Siblings per key past which a write is refused (with a clear error; nothing is dropped).
    pub sibling_max: u32,
    /// Send merged objects back to replicas that answered a get with stale data.
    pub read_repair: bool,
    /// How long a coordinator waits for a replica before it counts it as down and sends the
    /// write to a fallback (sloppy quorum) as well.
    pub fallback_after_ms: u32,
    /// Period of the core's maintenance tick (handoff, anti-entropy, probes, reaping).
    pub tick_ms: u32,
    /// Hints sent per handoff batch.
    pub handoff_batch: usize,
    /// Longest wait between two handoff attempts to an unreachable owner.
    pub handoff_backoff_max_ms: u32,
    /// How often this node starts an anti-entropy exchange (one partition, one peer).
    pub aae_interval_ms: u32,
    /// Read repairs sent per second at most; the rest is left to anti-entropy.
    pub read_repair_per_sec: u32,
    /// Stored records the background scrub checks per second at most (0: no scrub).
    pub scrub_per_sec: u32,
    /// How long a record must have been tombstone-only before its replica removes it (once
    /// its partition clock covers it, `reaper.rs`); 0 keeps tombstones forever. Default one
    /// minute. Not a safety bound: late copies of deleted values are dropped by the clock
    /// however late they come (docs/AVAILABILITY.md). The delay lets a fresh tombstone, rather
    /// than a fill, repair the replicas that missed the delete.
    pub tombstone_grace_ms: u32,
    /// Gossip round length.
    pub gossip_interval_ms: u32,
    /// Partition transfers this node sends at the same time at most.
    pub max_transfers: usize,
    /// Keys per transfer batch.
    pub transfer_batch: usize,
    /// Largest peer message the core builds (hint batches, anti-entropy steps, transfers are
    /// cut to fit); must stay below the transport's frame limit. Objects whose encoding would
    /// not fit are refused at the coordinator.
    pub max_message_bytes: usize,
    /// How long a node removed from the cluster keeps running (gossiping its removal) before
    /// the core asks its driver to stop it ([`crate::Effect::Stop`]).
    pub removed_linger_ms: u32,
    /// Operations a coordinator keeps in flight at most; past it requests are refused as
    /// overloaded instead of growing memory without bound.
    pub max_pending_ops: usize,
    /// TEST ONLY: a deliberately planted bug, so the simulator can prove its checkers fail.
    /// Exists only with the `planted-bugs` feature, which the `dynakv` binary never enables.
    #[cfg(feature = "planted-bugs")]
    #[serde(skip)]
    pub planted_bug: Option<PlantedBug>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            node: NodeId(0),
            n: 3,
            r: 2,
            w: 2,
            request_timeout_ms: 5_000,
            max_key_bytes: 4 * 1024,
            max_value_bytes: 4 * 1024 * 1024,
            sibling_warn: 25,
            sibling_max: 100,
            read_repair: true,
            fallback_after_ms: 300,
            tick_ms: 100,
            handoff_batch: 64,
            handoff_backoff_max_ms: 30_000,
            aae_interval_ms: 1_000,
            read_repair_per_sec: 2_000,
            scrub_per_sec: 1_000,
            tombstone_grace_ms: 60_000,
            gossip_interval_ms: 1_000,
            max_transfers: 2,
            transfer_batch: 256,
            max_message_bytes: 16 * 1024 * 1024,
            max_pending_ops: 50_000,
            removed_linger_ms: 10_000,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }
}

impl CoreConfig {
    /// Is `bug` planted? Always false without the `planted-bugs` feature, so release builds
    /// compile every check away.
    #[inline]
    pub(crate) fn has_bug(&self, bug: PlantedBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted_bug == Some(bug)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = bug;
            false
        }
    }

    /// Check the quorum defaults: 1 <= R, W <= N, and the limits are sane. The error
    /// ([`crate::Error::Config`]) names the first setting that is wrong.
    pub fn validate(&self) -> Result<(), crate::Error> {
        if self.n == 0 {
            return Err(crate::Error::Config("n must be at least 1".into()));
        }
        if self.r == 0 || self.r > self.n {
            return Err(crate::Error::Config(format!(
                "r must be in 1..={} (n), got {}",
                self.n, self.r
            )));
        }
        if self.w == 0 || self.w > self.n {
            return Err(crate::Error::Config(format!(
                "w must be in 1..={} (n), got {}",
                self.n, self.w
            )));
        }
        if self.request_timeout_ms == 0 {
            return Err(crate::Error::Config(
                "request_timeout_ms must be positive".into(),
            ));
        }
        if self.sibling_warn == 0 || self.sibling_max < self.sibling_warn {
            return Err(crate::Error::Config(
                "need 0 < sibling_warn <= sibling_max".into(),
            ));
        }
        if self.tick_ms == 0 || self.fallback_after_ms == 0 || self.aae_interval_ms == 0 {
            return Err(crate::Error::Config(
                "tick_ms, fallback_after_ms and aae_interval_ms must be positive".into(),
            ));
        }
        if self.handoff_batch == 0 || self.transfer_batch == 0 || self.max_transfers == 0 {
            return Err(crate::Error::Config(
                "handoff_batch, transfer_batch and max_transfers must be positive".into(),
            ));
        }
        if self.max_message_bytes < 2 * (self.max_value_bytes + self.max_key_bytes) {
            return Err(crate::Error::Config(
                "max_message_bytes must be at least twice max_value_bytes + max_key_bytes".into(),
            ));
        }
        if self.max_pending_ops == 0 {
            return Err(crate::Error::Config(
                "max_pending_ops must be positive".into(),
            ));
        }
        if self.gossip_interval_ms == 0 {
            return Err(crate::Error::Config(
                "gossip_interval_ms must be positive".into(),
            ));
        }
        if self.max_key_bytes == 0 || self.max_value_bytes == 0 {
            return Err(crate::Error::Config(
                "key and value limits must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Known bugs that can be planted in the core (test-only) to show that the simulator's
/// invariant checkers catch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PlantedBug {
    /// Resolve siblings by keeping only the newest value (last-write-wins).
    LastWriteWins,
    /// Acknowledge writes without waiting for them to be durable.
    AckBeforeStore,
    /// After a wipe, keep the old actor identity, so dots are minted again.
    ReuseDotsAfterWipe,
    /// On a replica, overwrite the stored object with the incoming one instead of merging.
    OverwriteOnReplica,
    /// Reap tombstones at once, before the partition clock covers them.
    EagerReap,
    /// Keep the incarnation recorded on disk at restart (a disk that lost a tail of synced
    /// writes then makes the node mint dots it already used).
    KeepIncarnation,
    /// After a failed store sync, keep serving and trust the next sync (PostgreSQL's fsyncgate
    /// mistake) instead of stopping.
    RetryFailedSync,
    /// No ownership check on the data path: a node that does not replicate a partition under
    /// its own map (the coordinator's map is stale) stores a replica write as its own data and
    /// acknowledges it as a primary, instead of hinting it to the current owners and
    /// acknowledging as a fallback.
    NonOwnerAck,
    /// After removing a corrupt record, keep minting under the same actor (the lost record
    /// may have held this node's own dots for the key, so a later write can reuse one).
    KeepActorAfterCorruption,
    /// Mint without the reap floor: after a tombstone was reaped, a write of the key (or of
    /// a key brought back by a restore) can be given a dot this actor already minted for it.
    IgnoreReapFloor,
    /// Merge late copies without the node-clock check: a copy of a version this replica stored
    /// and saw superseded is taken back when its key was removed (a reaped tombstone), so a
    /// held or delayed old copy brings a deleted value back.
    SkipNodeClockCheck,
    /// A forwarder grants every claim of a forwarded write, so each copy of the forward that
    /// reaches a replica (a duplicate, one that arrives after the replica restarted) is
    /// coordinated again under a new dot, and an overwritten value comes back as a sibling.
    GrantEveryClaim,
    /// A replica whose disk refused a replica write (full, or a metadata record pending)
    /// acknowledges it as stored anyway, so the coordinator counts a copy that does not exist.
    AckRefusedWrite,
}

impl PlantedBug {
    /// Every planted bug, for `--help` listings and tests.
    pub const ALL: [PlantedBug; 13] = [
        PlantedBug::LastWriteWins,
        PlantedBug::AckBeforeStore,
        PlantedBug::ReuseDotsAfterWipe,
        PlantedBug::OverwriteOnReplica,
        PlantedBug::EagerReap,
        PlantedBug::KeepIncarnation,
        PlantedBug::RetryFailedSync,
        PlantedBug::NonOwnerAck,
        PlantedBug::KeepActorAfterCorruption,
        PlantedBug::IgnoreReapFloor,
        PlantedBug::SkipNodeClockCheck,
        PlantedBug::GrantEveryClaim,
        PlantedBug::AckRefusedWrite,
    ];

    /// The kebab-case name used on command lines.
    pub fn name(&self) -> &'static str {
        match self {
            PlantedBug::LastWriteWins => "lww",
            PlantedBug::AckBeforeStore => "ack-before-store",
            PlantedBug::ReuseDotsAfterWipe => "reuse-dots",
            PlantedBug::OverwriteOnReplica => "overwrite-replica",
            PlantedBug::EagerReap => "eager-reap",
            PlantedBug::KeepIncarnation => "keep-incarnation",
            PlantedBug::RetryFailedSync => "retry-failed-sync",
            PlantedBug::NonOwnerAck => "non-owner-ack",
            PlantedBug::KeepActorAfterCorruption => "keep-actor-after-corruption",
            PlantedBug::IgnoreReapFloor => "ignore-reap-floor",
            PlantedBug::SkipNodeClockCheck => "skip-node-clock-check",
            PlantedBug::GrantEveryClaim => "grant-every-claim",
            PlantedBug::AckRefusedWrite => "ack-refused-write",
        }
    }
}
