//! Simulated clients: gets, blind puts, puts with (possibly stale) contexts, read-modify-write
//! merges and deletes over a small key set, every written value unique so the checker can trace it.

use std::collections::BTreeMap;

use bytes::Bytes;
use dynakv_core::store::Store as _;
use dynakv_core::{ClientReply, ClientRequest, RequestError, RequestId, RequestOptions};
use dynakv_proto::dvv::NodeClock;
use rand::Rng;

use crate::checker::{History, Outcome, WriteRecord};
use crate::config::SimConfig;
use crate::world::{Event, World, SIM_REQUEST_TIMEOUT_MS};

/// Delay between the heal and the first quiet-phase read.
const QUIET_START_DELAY_US: u64 = 2_000_000;
/// Tries of each quiet-phase read before a liveness violation.
const QUIET_ATTEMPTS: u32 = 3;

/// How long a client waits for any reply before it calls the outcome unknown.
/// The value limit of the simulated nodes; some writes go near it and a few past it.
pub(crate) const SIM_MAX_VALUE_BYTES: usize = 4096;

const CLIENT_GIVE_UP_US: u64 = (SIM_REQUEST_TIMEOUT_MS as u64 + 1_000) * 1_000;

/// What a client does with the reply of a get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterGet {
    Nothing,
    /// Read-modify-write: write a new value with the context just read.
    Merge,
    /// Delete what was just read.
    Delete,
}

#[derive(Debug, Clone)]
enum PendingKind {
    Get {
        then: AfterGet,
    },
    Write {
        record: usize,
    },
    /// A get of the quiet phase, which must succeed.
    QuietGet,
    /// A write of the preload phase.
    Preload {
        record: usize,
    },
    /// A restore of a stored object copied from a replica earlier (an operator's backup):
    /// it mints nothing, so the history records nothing; the checks must hold all the same.
    Restore,
}

#[derive(Debug, Clone)]
struct Pending {
    client: usize,
    key: String,
    kind: PendingKind,
    /// When the client submitted it.
    at: u64,
}

#[derive(Debug, Clone, Default)]
struct Client {
    seq: u64,
    contexts: BTreeMap<String, NodeClock>,
}

/// The phase the run is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Chaos,
    Quiet,
    Done,
}

/// All simulated clients and what they have seen.
#[derive(Debug)]
pub(crate) struct Workload {
    clients: Vec<Client>,
    pending: BTreeMap<RequestId, Pending>,
    next_req: RequestId,
    issued: u32,
    target: u32,
    keys: Vec<String>,
    /// Hot keys plus the preloaded ones: every key the checker looks at.
    all_keys: Vec<String>,
    preload_queue: Vec<String>,
    quiet_queue: Vec<String>,
    quiet_attempts: BTreeMap<String, u32>,
    pub phase: Phase,
    pub history: History,
    /// With reaping: copies of keys taken earlier (a backup), restored later, possibly after
    /// the key's tombstone was reaped (which brings the value back, as OPERATIONS.md says, and
    /// must never make a node reuse a dot).
    old_copies: BTreeMap<String, dynakv_core::Object>,
    /// With reaping: keys whose delete was just acknowledged, left alone until the time given
    /// (µs) so that their tombstone can be reaped during the run; the first operation after it
    /// restores the key's old copy.
    rested: BTreeMap<String, u64>,
}

impl Workload {
    pub fn new(cfg: &SimConfig) -> Self {
        Self {
            clients: vec![Client::default(); cfg.clients as usize],
            pending: BTreeMap::new(),
            next_req: 1,
            issued: 0,
            target: cfg.ops,
            keys: (0..cfg.keys).map(|i| format!("k{i}")).collect(),
            all_keys: (0..cfg.keys)
                .map(|i| format!("k{i}"))
                .chain((0..cfg.preload).map(|i| format!("bg{i}")))
                .collect(),
            preload_queue: (0..cfg.preload).rev().map(|i| format!("bg{i}")).collect(),
            quiet_queue: Vec::new(),
            quiet_attempts: BTreeMap::new(),
            phase: Phase::Chaos,
            history: History::default(),
            old_copies: BTreeMap::new(),
            rested: BTreeMap::new(),
        }
    }

    pub fn in_chaos(&self) -> bool {
        self.phase == Phase::Chaos
    }

    /// Every chaos operation was issued and answered (or given up on).
    pub fn chaos_done(&self) -> bool {
        self.issued >= self.target && self.pending.is_empty()
    }

    /// The keys the clients write and read during the chaos phase.
    pub fn hot_keys(&self) -> &[String] {
        &self.keys
    }

    pub fn checked_keys(&self) -> &[String] {
        &self.all_keys
    }
}

fn key_bytes(key: &str) -> Bytes {
    Bytes::from(key.to_string())
}

impl World {
    /// Write the preloaded keys one by one (no faults yet), then start the chaos phase.
    pub(crate) fn preload_next(&mut self) {
        let Some(key) = self.workload.preload_queue.pop() else {
            self.start_clients();
            let at = self.now + 1_000;
            self.schedule(at, Event::FaultTick);
            return;
        };
        let value = format!("{key}-v");
        let record = self.workload.history.writes.len();
        self.workload.history.written_values.insert(value.clone());
        let loader = self.workload.clients.len();
        self.workload.history.writes.push(WriteRecord {
            client: loader,
            key: key.clone(),
            value: Some(value.clone()),
            context: NodeClock::new(),
            outcome: Outcome::Pending,
            dot: None,
            at: self.now,
            done_at: None,
            primary_acks: 0,
        });
        let request = ClientRequest::Put {
            key: key_bytes(&key),
            value: Bytes::from(value),
            context: NodeClock::new(),
            opts: RequestOptions::default(),
        };
        self.submit(loader, key, request, PendingKind::Preload { record });
    }

    /// Start the clients, staggered.
    pub(crate) fn start_clients(&mut self) {
        for c in 0..self.workload.clients.len() {
            let at = self.now + self.rng.gen_range(0..5_000);
            self.schedule(at, Event::ClientNext { client: c });
        }
    }

    fn submit(&mut self, client: usize, key: String, request: ClientRequest, kind: PendingKind) {
        let id = self.workload.next_req;
        self.workload.next_req += 1;
        // Clients use the members they know: not spares, nor nodes known to have left.
        let active: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| n.is_active() && !n.retiring)
            .map(|n| n.id)
            .collect();
        let node = active[self.rng.gen_range(0..active.len())];
        if self.cfg.trace_key.as_deref() == Some(key.as_str()) {
            let line = format!(
                "t={}us client {client} -> node {node}: {request:?}",
                self.now
            );
            self.trace_line(line);
        }
        self.workload.pending.insert(
            id,
            Pending {
                client,
                key,
                kind,
                at: self.now,
            },
        );
        let at = self.now + self.rng.gen_range(50..500);
        self.schedule(at, Event::Request { node, id, request });
        let give_up = self.now + CLIENT_GIVE_UP_US;
        self.schedule(give_up, Event::GiveUp { id });
    }

    /// A value no client wrote before: `c<client>-<n>`, and for 3% of writes padded up to the
    /// value limit (the coordinator's and the replicas' size checks then run near their edge).
    fn fresh_value(&mut self, client: usize) -> String {
        let c = &mut self.workload.clients[client];
        c.seq += 1;
        let mut v = format!("c{client}-{}", c.seq);
        if self.rng.gen_bool(0.03) {
            let len = self
                .rng
                .gen_range(SIM_MAX_VALUE_BYTES - 512..=SIM_MAX_VALUE_BYTES);
            v.push('~');
            while v.len() < len {
                v.push('x');
            }
        }
        v
    }

    /// Per-request options as real clients send them: mostly the defaults, sometimes other
    /// R/W (never a W below the cluster's: wipes are budgeted against it), PR/PW, and short or
    /// long timeouts.
    fn request_options(&mut self, write: bool) -> RequestOptions {
        if !self.rng.gen_bool(0.25) {
            return RequestOptions::default();
        }
        let n = self.cfg.n;
        let mut o = RequestOptions::default();
        if write {
            let w = self.rng.gen_range(self.cfg.w..=n);
            o.w = Some(w);
            if self.rng.gen_bool(0.2) {
                o.pw = Some(self.rng.gen_range(0..=w));
            }
        } else {
            let r = self.rng.gen_range(1..=n);
            o.r = Some(r);
            if self.rng.gen_bool(0.2) {
                o.pr = Some(self.rng.gen_range(0..=r));
            }
        }
        o.timeout_ms = match self.rng.gen_range(0..4) {
            0 => Some(150),
            1 => Some(3_000),
            2 => Some(30_000),
            _ => None,
        };
        o
    }

    fn write(&mut self, client: usize, key: String, value: Option<String>, context: NodeClock) {
        let record = self.workload.history.writes.len();
        if let Some(v) = &value {
            self.workload.history.written_values.insert(v.clone());
        }
        self.workload.history.writes.push(WriteRecord {
            client,
            key: key.clone(),
            value: value.clone(),
            context: context.clone(),
            outcome: Outcome::Pending,
            dot: None,
            at: self.now,
            done_at: None,
            primary_acks: 0,
        });
        let opts = self.request_options(true);
        let request = match value {
            Some(v) => ClientRequest::Put {
                key: key_bytes(&key),
                value: Bytes::from(v),
                context,
                opts,
            },
            None => ClientRequest::Delete {
                key: key_bytes(&key),
                context,
                opts,
            },
        };
        self.submit(client, key, request, PendingKind::Write { record });
    }

    /// A copy of `key` as a random running node stores it now (a backup of it), if it has one
    /// that reads back (a corrupt record is no backup).
    fn backup_copy(&mut self, key: &str) -> Option<dynakv_core::Object> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].core.is_some())
            .collect();
        if running.is_empty() {
            return None;
        }
        let i = running[self.rng.gen_range(0..running.len())];
        let core = self.nodes[i].core.as_ref()?;
        let p = core.partition_map().partition_for_key(key.as_bytes());
        let bytes = core
            .store()
            .get(dynakv_core::store::Space::Partition(p), key.as_bytes())
            .ok()??;
        dynakv_proto::codec::decode_object(&bytes).ok()
    }

    /// Restores `object` for `key`, or (with none) issues a plain get.
    fn submit_restore_or_get(
        &mut self,
        client: usize,
        key: String,
        object: Option<dynakv_core::Object>,
        opts: RequestOptions,
    ) {
        let (request, kind) = match object {
            Some(object) => (
                ClientRequest::Restore {
                    key: key_bytes(&key),
                    object,
                    opts,
                },
                PendingKind::Restore,
            ),
            None => (
                ClientRequest::Get {
                    key: key_bytes(&key),
                    opts,
                },
                PendingKind::Get {
                    then: AfterGet::Nothing,
                },
            ),
        };
        self.submit(client, key, request, kind);
    }

    /// Whether any running node stores a record of `key`.
    fn stored_anywhere(&self, key: &str) -> bool {
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .any(|core| {
                let p = core.partition_map().partition_for_key(key.as_bytes());
                core.store()
                    .get(dynakv_core::store::Space::Partition(p), key.as_bytes())
                    .is_ok_and(|v| v.is_some())
            })
    }

    /// A client picks its next operation.
    pub(crate) fn client_next(&mut self, client: usize) {
        if self.workload.phase != Phase::Chaos || self.workload.issued >= self.workload.target {
            return;
        }
        self.workload.issued += 1;
        let i = self.rng.gen_range(0..self.workload.keys.len());
        let mut key = self.workload.keys[i].clone();
        let mut roll = self.rng.gen_range(0..100);
        if self.cfg.reap {
            // Leave a freshly deleted key alone (another one is used instead) until its rest
            // ends; then restore its old copy first, if one was taken. When every key rests,
            // the client only reads, so no write pushes a rest back.
            let now = self.now;
            let keys = &self.workload.keys;
            let rested = &self.workload.rested;
            let busy = |k: &String| rested.get(k).is_some_and(|until| now < *until);
            if busy(&key) {
                match (1..keys.len())
                    .map(|d| &keys[(i + d) % keys.len()])
                    .find(|k| !busy(k))
                {
                    Some(other) => key = other.clone(),
                    None => roll = 10,
                }
            }
            if self
                .workload
                .rested
                .get(&key)
                .is_some_and(|until| now >= *until)
            {
                self.workload.rested.remove(&key);
                if self.workload.old_copies.contains_key(&key) {
                    roll = 0;
                }
            }
        }
        let opts = self.request_options(false);
        let get = |then| {
            (
                ClientRequest::Get {
                    key: key_bytes(&key),
                    opts,
                },
                PendingKind::Get { then },
            )
        };
        match roll {
            // With reaping, three operations in a hundred either take a copy of the key (a
            // backup) or restore the one taken earlier, once its delete was reaped:
            // the value comes back (docs/OPERATIONS.md says so; the checker allows it for
            // restored dots), and no node may mint one of the key's old dots again.
            0..=2 if self.cfg.reap => {
                // Restore once the key is gone from every running node (its tombstone was
                // reaped, or it was never written): the case that brings old dots back.
                let restore = match self.workload.old_copies.remove(&key) {
                    Some(old) if !self.stored_anywhere(&key) => Some(old),
                    Some(old) => {
                        self.workload.old_copies.insert(key.clone(), old);
                        None
                    }
                    None => {
                        if let Some(copy) = self.backup_copy(&key) {
                            self.workload.old_copies.insert(key.clone(), copy);
                        }
                        None
                    }
                };
                if let Some(object) = &restore {
                    let dots = self.workload.history.restored_dots.entry(key.clone());
                    let dots = dots.or_default();
                    for (d, _) in object.versions() {
                        dots.entry(*d).or_insert(self.now);
                    }
                }
                self.submit_restore_or_get(client, key, restore, opts);
            }
            // Without reaping, one operation in a hundred restores the key's copy as a random
            // node stores it now, as `dynakv restore` of a recent backup would.
            0 if !self.cfg.reap => {
                let copy = self.backup_copy(&key);
                self.submit_restore_or_get(client, key, copy, opts);
            }
            0..=29 => {
                let (r, k) = get(AfterGet::Nothing);
                self.submit(client, key, r, k);
            }
            30..=54 => {
                let (r, k) = get(AfterGet::Merge);
                self.submit(client, key, r, k);
            }
            55..=64 => {
                let (r, k) = get(AfterGet::Delete);
                self.submit(client, key, r, k);
            }
            65..=79 => {
                let v = self.fresh_value(client);
                self.write(client, key, Some(v), NodeClock::new());
            }
            _ => {
                // A put with the last context this client saw for the key (often stale).
                let ctx = self.workload.clients[client]
                    .contexts
                    .get(&key)
                    .cloned()
                    .unwrap_or_default();
                let v = self.fresh_value(client);
                self.write(client, key, Some(v), ctx);
            }
        }
    }

    fn think(&mut self, client: usize) {
        let at = self.now + self.rng.gen_range(0..5_000);
        self.schedule(at, Event::ClientNext { client });
    }

    /// A reply reached its client.
    pub(crate) fn on_reply(&mut self, id: RequestId, reply: ClientReply) {
        let Some(p) = self.workload.pending.remove(&id) else {
            return; // the client gave up already
        };
        if self.cfg.trace_key.as_deref() == Some(p.key.as_str()) {
            let line = format!("t={}us reply to client {}: {reply:?}", self.now, p.client);
            self.trace_line(line);
        }
        let h = &mut self.workload.history;
        match (p.kind, reply) {
            (PendingKind::Write { record }, ClientReply::Written(w)) => {
                h.writes[record].outcome = Outcome::Acked;
                h.writes[record].done_at = Some(self.now);
                h.writes[record].dot = w.dot;
                h.writes[record].primary_acks = w.primary_acks;
                if self.cfg.reap && h.writes[record].value.is_none() {
                    let until = self.now + self.rng.gen_range(4_000_000..8_000_000);
                    self.workload.rested.insert(p.key.clone(), until);
                }
                self.workload.clients[p.client]
                    .contexts
                    .insert(p.key, w.context);
            }
            (PendingKind::Write { record }, ClientReply::Error(e)) => {
                h.writes[record].outcome = if never_applied(&e) {
                    Outcome::Failed
                } else {
                    Outcome::Unknown
                };
            }
            (PendingKind::Get { then }, ClientReply::Got(g)) => {
                h.gets_ok += 1;
                h.reads.push(crate::checker::ReadRecord {
                    client: p.client,
                    key: p.key.clone(),
                    at: p.at,
                    done_at: self.now,
                    values: g
                        .values
                        .iter()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect(),
                    primary_replies: g.primary_replies,
                });
                h.max_siblings = h.max_siblings.max(g.values.len());
                if g.values.len() > 1 {
                    h.sibling_reads += 1;
                }
                self.workload.clients[p.client]
                    .contexts
                    .insert(p.key.clone(), g.context.clone());
                match then {
                    AfterGet::Merge => {
                        let v = self.fresh_value(p.client);
                        self.write(p.client, p.key, Some(v), g.context);
                        return;
                    }
                    AfterGet::Delete if !g.values.is_empty() => {
                        self.write(p.client, p.key, None, g.context);
                        return;
                    }
                    _ => {}
                }
            }
            (PendingKind::Get { .. }, _) => h.gets_failed += 1,
            (PendingKind::Preload { record }, reply) => {
                match reply {
                    ClientReply::Written(w) => {
                        h.writes[record].outcome = Outcome::Acked;
                        h.writes[record].done_at = Some(self.now);
                        h.writes[record].dot = w.dot;
                        h.writes[record].primary_acks = w.primary_acks;
                    }
                    _ => h.writes[record].outcome = Outcome::Unknown,
                }
                self.preload_next();
                return;
            }
            (PendingKind::QuietGet, ClientReply::Got(_)) => {
                self.quiet_next();
                return;
            }
            (PendingKind::QuietGet, other) => {
                // Right after the heal a coordinator may still believe a peer down (it probes
                // once a second): retry, as a client would; failing every attempt is a violation.
                self.quiet_retry(p.key, format!("{other:?}"));
                return;
            }
            (PendingKind::Write { record }, other) => {
                h.writes[record].outcome = Outcome::Unknown;
                h.quiet_failures
                    .push(format!("unexpected write reply {other:?}"));
            }
            (PendingKind::Restore, ClientReply::Written(w)) => {
                h.restores_ok += 1;
                if w.dot.is_some() {
                    h.quiet_failures
                        .push(format!("a restore minted a dot: {w:?}"));
                }
            }
            (PendingKind::Restore, _) => {}
        }
        self.think(p.client);
    }

    /// A client stopped waiting.
    pub(crate) fn give_up(&mut self, id: RequestId) {
        let Some(p) = self.workload.pending.remove(&id) else {
            return;
        };
        match p.kind {
            PendingKind::Write { record } => {
                self.workload.history.writes[record].outcome = Outcome::Unknown;
                // Half the clients retry a write that got no answer (the same value and
                // context), as applications do after a transport error.
                if self.workload.phase == Phase::Chaos && self.rng.gen_bool(0.5) {
                    let w = &self.workload.history.writes[record];
                    let (key, value, context) = (w.key.clone(), w.value.clone(), w.context.clone());
                    self.write(p.client, key, value, context);
                    return;
                }
            }
            PendingKind::Get { .. } | PendingKind::Restore => {
                self.workload.history.gets_failed += 1
            }
            PendingKind::QuietGet => {
                self.quiet_retry(p.key, "no reply".into());
                return;
            }
            PendingKind::Preload { record } => {
                self.workload.history.writes[record].outcome = Outcome::Unknown;
                self.preload_next();
                return;
            }
        }
        self.think(p.client);
    }

    /// Begin the quiet phase: every key is read once with R=N (which also read-repairs).
    pub(crate) fn start_quiet(&mut self) {
        self.workload.phase = Phase::Quiet;
        let mut keys = self.workload.keys.clone();
        keys.reverse();
        self.workload.quiet_queue = keys;
        // Give failure detectors a moment to see the healed network (probes run every second).
        let at = self.now + QUIET_START_DELAY_US;
        self.schedule(at, Event::QuietNext);
    }

    /// A quiet-phase read failed: retry it a few times before calling it a liveness failure.
    fn quiet_retry(&mut self, key: String, why: String) {
        let attempts = self.workload.quiet_attempts.entry(key.clone()).or_insert(0);
        *attempts += 1;
        if *attempts >= QUIET_ATTEMPTS {
            self.workload.history.quiet_failures.push(format!(
                "quiet-phase get of {key} failed {QUIET_ATTEMPTS} times after the heal; last: {why}"
            ));
            self.quiet_next();
            return;
        }
        self.workload.quiet_queue.push(key);
        let at = self.now + 1_000_000;
        self.schedule(at, Event::QuietNext);
    }

    pub(crate) fn quiet_next(&mut self) {
        let Some(key) = self.workload.quiet_queue.pop() else {
            self.workload.phase = Phase::Done;
            return;
        };
        let request = ClientRequest::Get {
            key: key_bytes(&key),
            opts: RequestOptions {
                r: Some(self.cfg.n),
                ..RequestOptions::default()
            },
        };
        self.submit(0, key, request, PendingKind::QuietGet);
    }
}

/// Errors raised before the write touched any replica: the write certainly did not happen.
fn never_applied(e: &RequestError) -> bool {
    matches!(
        e,
        RequestError::InvalidOptions(_)
            | RequestError::BadKey(_)
            | RequestError::ValueTooLarge { .. }
            | RequestError::Unavailable { .. }
            | RequestError::TooManySiblings { .. }
            | RequestError::ContextTooLarge { .. }
            | RequestError::Removed { .. }
            | RequestError::NotJoined { .. }
            | RequestError::StorageFailed { .. }
    )
}
