//! The fault scheduler: during the chaos phase, at random intervals, it partitions, clogs,
//! crashes, wipes and pauses nodes. Loss, duplication, reordering and skew are continuous and
//! live in the network and clock models (`world.rs`).

use dynakv_ring::NodeId;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::config::FaultKind;
use crate::world::{Event, World};

impl World {
    pub(crate) fn count_fault(&mut self, name: &'static str) {
        *self.faults.entry(name).or_insert(0) += 1;
        // What a quorum read cannot be held to (the checker's `stale-read`): synced data lost on
        // a node, or a map that moved.
        match name {
            "wipe" | "powerloss" | "corrupt" => self.data_losses.push(self.now),
            "join" | "leave" | "remove" => {
                self.first_membership_change.get_or_insert(self.now);
            }
            _ => {}
        }
    }

    fn random_node(&mut self) -> NodeId {
        let active: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.is_active())
            .map(|n| n.id)
            .collect();
        if active.is_empty() {
            return NodeId(1);
        }
        active[self.rng.gen_range(0..active.len())]
    }

    /// Nodes currently crashed or paused.
    fn nodes_out(&self) -> u32 {
        self.nodes
            .iter()
            .filter(|n| {
                let fenced = n
                    .core
                    .as_ref()
                    .is_some_and(|c| c.storage_failure().is_some());
                n.is_active() && (!n.is_up() || n.paused || fenced || n.cut_in_next_step.is_some())
            })
            .count() as u32
    }

    /// Inject one scheduled fault and schedule the next tick (while the chaos phase lasts).
    pub(crate) fn fault_tick(&mut self) {
        if !self.workload.in_chaos() {
            return;
        }
        let f = &self.cfg.faults;
        let mut kinds = Vec::new();
        for k in [
            FaultKind::Partition,
            FaultKind::OneWay,
            FaultKind::Clog,
            FaultKind::Crash,
            FaultKind::Pause,
            FaultKind::Membership,
            FaultKind::Hold,
            FaultKind::Disk,
            FaultKind::Corrupt,
        ] {
            if f.has(k) {
                kinds.push(k);
            }
        }
        if let Some(&kind) = kinds.choose(&mut self.rng) {
            self.inject(kind);
        }
        let mean = self.params.fault_interval_us;
        let next = self.now + self.rng.gen_range(mean / 2..=mean * 3 / 2);
        self.schedule(next, Event::FaultTick);
    }

    fn inject(&mut self, kind: FaultKind) {
        match kind {
            FaultKind::Partition | FaultKind::OneWay => {
                if self.net.cuts.values().any(|(_, clog)| !clog) {
                    return; // one partition at a time keeps some seeds making progress
                }
                let (a, b) = self.split();
                if a.is_empty() || b.is_empty() {
                    return;
                }
                let one_way = kind == FaultKind::OneWay;
                let mut links = Vec::new();
                for x in &a {
                    for y in &b {
                        links.push((*x, *y));
                        if !one_way {
                            links.push((*y, *x));
                        }
                    }
                }
                let duration = self.rng.gen_range(50_000..1_500_000);
                self.count_fault(if one_way { "oneway" } else { "partition" });
                let line = format!(
                    "t={}us {} {:?} | {:?} for {}ms",
                    self.now,
                    if one_way { "ONE-WAY CUT" } else { "PARTITION" },
                    a,
                    b,
                    duration / 1000
                );
                self.trace_line(line);
                self.add_cut(links, false, duration);
            }
            FaultKind::Clog => {
                let x = self.random_node();
                let y = self.random_node();
                if x == y || self.net.cuts.values().filter(|(_, clog)| *clog).count() >= 2 {
                    return;
                }
                let duration = self.rng.gen_range(50_000..1_000_000);
                self.count_fault("clog");
                let line = format!("t={}us CLOG {x} -> {y} for {}ms", self.now, duration / 1000);
                self.trace_line(line);
                self.add_cut(vec![(x, y)], true, duration);
            }
            FaultKind::Crash => {
                let mut id = self.random_node();
                if !self.node_mut(id).is_up() || self.nodes_out() >= self.params.max_down {
                    return;
                }
                // Wipes and power losses share one budget (W-1 per run): each may lose the
                // node's copy of acknowledged writes, and one copy of each must survive.
                let (can_wipe, can_lose) = (
                    self.cfg.faults.has(FaultKind::Wipe),
                    self.cfg.faults.has(FaultKind::PowerLoss),
                );
                let budgeted =
                    (can_wipe || can_lose) && self.wipes_left > 0 && self.rng.gen_bool(0.4);
                let wipe = budgeted && can_wipe && (!can_lose || self.rng.gen_bool(0.3));
                let power_loss = budgeted && !wipe;
                // Half the power losses hit a node that is receiving a transfer, if any: the
                // synced batches it loses then include acknowledged transfer batches, and the
                // sender's cursor is ahead of what the node still holds (a pass it must take
                // again from the first key).
                if power_loss && self.rng.gen_bool(0.5) {
                    let receiving: Vec<NodeId> = self
                        .nodes
                        .iter()
                        .filter(|n| n.is_active() && !n.paused)
                        .filter(|n| n.core.as_ref().is_some_and(|c| c.incoming_pending() > 0))
                        .map(|n| n.id)
                        .collect();
                    if !receiving.is_empty() {
                        id = receiving[self.rng.gen_range(0..receiving.len())];
                    }
                }
                if budgeted {
                    self.wipes_left -= 1;
                    self.count_fault(if wipe { "wipe" } else { "powerloss" });
                }
                self.count_fault("crash");
                // `torn`: half of the plain crashes cut the power in the middle of the node's
                // next step instead, with its writes made and not yet synced.
                if !budgeted && self.cfg.faults.has(FaultKind::Torn) && self.torn_rng.gen_bool(0.5)
                {
                    let down = self.torn_rng.gen_range(50_000..1_500_000);
                    let until = self.now + 2_000_000;
                    self.node_mut(id).cut_in_next_step = Some((down, until));
                    return;
                }
                self.crash(id);
                if power_loss {
                    let batches = self.rng.gen_range(4..=32);
                    if let Some(disk) = self.node_mut(id).disk.as_mut() {
                        let taken = disk.power_loss(batches);
                        let line = format!(
                            "t={}us node {id} POWER LOSS: {taken} synced batches lost",
                            self.now
                        );
                        self.trace_line(line);
                    }
                }
                let down = self.rng.gen_range(50_000..1_500_000);
                let at = self.now + down;
                self.schedule(at, Event::Restart { node: id, wipe });
            }
            FaultKind::Pause => {
                let id = self.random_node();
                let node = self.node_mut(id);
                if node.paused || !node.is_up() {
                    return;
                }
                if self.nodes_out() >= self.params.max_down {
                    return;
                }
                let node = self.node_mut(id);
                node.paused = true;
                self.count_fault("pause");
                // Mostly short (a GC pause), sometimes seconds (a stopped VM, a swap storm).
                let d = if self.rng.gen_bool(0.1) {
                    self.rng.gen_range(2_000_000..8_000_000)
                } else {
                    self.rng.gen_range(10_000..500_000)
                };
                let line = format!("t={}us node {id} PAUSED for {}ms", self.now, d / 1000);
                self.trace_line(line);
                let at = self.now + d;
                self.schedule(at, Event::Resume { node: id });
            }
            FaultKind::Membership => self.change_membership(),
            FaultKind::Disk => self.disk_fault(),
            FaultKind::Corrupt => self.corrupt_fault(),
            FaultKind::Hold => {
                let x = self.random_node();
                let y = self.random_node();
                if x == y || self.now < self.hold_until {
                    return; // one hold at a time
                }
                let duration = self.rng.gen_range(4_000_000..12_000_000);
                self.count_fault("hold");
                let line = format!("t={}us HOLD {x} -> {y} for {}ms", self.now, duration / 1000);
                self.trace_line(line);
                self.hold_until = self.now + duration;
                self.add_cut(vec![(x, y)], true, duration);
            }
            _ => {}
        }
    }

    /// A node's disk fails its next sync (the node stops serving) or fills up; the operator
    /// fixes it a while later (`Event::FixDisk`).
    fn disk_fault(&mut self) {
        let id = self.random_node();
        if self.nodes_out() >= self.params.max_down {
            return;
        }
        // Half fail a sync; the others fill the disk, half of them only nearly: then every
        // few writes one is refused, so a write the node depends on can fail while the next
        // one lands (a node must not store data over metadata the disk refused).
        let kind = self.rng.gen_range(0..4u8);
        let every = self.rng.gen_range(2..5u32);
        let fixed_after = self.rng.gen_range(100_000..3_000_000);
        let node = self.node_mut(id);
        let Some(core) = node.core.as_mut() else {
            return;
        };
        let (what, fault) = match kind {
            0 | 1 => {
                core.store_mut().fail_next_syncs(1);
                ("SYNC FAILURE".to_string(), "sync-failure")
            }
            2 => {
                core.store_mut().set_full(true);
                ("DISK FULL".to_string(), "disk-full")
            }
            _ => {
                core.store_mut().set_nearly_full(every);
                (
                    format!("DISK NEARLY FULL (every {every}th write refused)"),
                    "disk-nearly-full",
                )
            }
        };
        self.count_fault(fault);
        self.trace_line(format!("t={}us node {id} {what}", self.now));
        let at = self.now + fixed_after;
        self.schedule(at, Event::FixDisk { node: id });
    }

    /// Flip bits in up to 8 stored records of one running node. Each hit record loses the
    /// node's copy of its key, so the fault takes one unit of the wipe budget (one copy of
    /// every acknowledged write must survive).
    fn corrupt_fault(&mut self) {
        if self.wipes_left == 0 {
            return;
        }
        let id = self.random_node();
        let count = self.rng.gen_range(1..=8);
        // A third of the time any record; a third only keys the clients keep writing (a
        // coordinator that finds one of those corrupt is about to mint for it, which a record
        // of a preloaded key, never written again, cannot show); a third only those records
        // that hold a value the node's current actor minted: the kv679 case, where the node
        // lost a dot of its own that other replicas still hold.
        let mode = self.rng.gen_range(0..3u8);
        let hot: Vec<Vec<u8>> = self
            .workload
            .hot_keys()
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        let idx = (id.0 as usize).saturating_sub(1);
        let (nodes, rng) = (&mut self.nodes, &mut self.rng);
        let Some(node) = nodes.get_mut(idx) else {
            return;
        };
        let hit = match node.core.as_mut() {
            Some(core) if !node.paused => {
                let actor = core.actor();
                core.store_mut().corrupt(
                    count,
                    |n| rng.gen_range(0..n.max(1)),
                    |k, v| {
                        mode == 0
                            || (hot.iter().any(|h| h == k) && (mode == 1 || own_value(v, actor)))
                    },
                )
            }
            _ => Vec::new(),
        };
        if hit.is_empty() {
            return;
        }
        self.wipes_left -= 1;
        self.count_fault("corrupt");
        for (_, k) in &hit {
            let key = String::from_utf8_lossy(k).into_owned();
            self.corrupted.push((id, key, self.now));
        }
        let keys: Vec<String> = hit
            .iter()
            .map(|(p, k)| format!("{p}/{}", String::from_utf8_lossy(k)))
            .collect();
        let line = format!("t={}us node {id} CORRUPTED {keys:?}", self.now);
        self.trace_line(line);
    }

    /// A spare joins, or a member leaves (at most one leave per run; never below N owners).
    fn change_membership(&mut self) {
        if self.membership_changes >= 4 || !self.membership_settled() {
            return; // one change at a time, four per run: enough to move partitions under load
        }
        let spare = self.nodes.iter().find(|n| n.spare).map(|n| n.id);
        // Members that own data (valid or joining), as the cluster sees them.
        let owners = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .find_map(|c| c.cluster_state().map(|s| s.owning_members().len() as u32))
            .unwrap_or(0);
        let join =
            spare.is_some() && (self.rng.gen_bool(0.5) || owners <= u32::from(self.cfg.n) + 1);
        if join {
            if let Some(id) = spare {
                self.membership_changes += 1;
                self.count_fault("join");
                self.join_spare(id);
            }
        } else if owners > u32::from(self.cfg.n) + 1
            && self.wipes_left > 0
            && self.rng.gen_bool(0.3)
        {
            // The operator removes a crashed member for good (`dynakv admin remove`). Its copies
            // (replicas and the hints it held) are lost as with a wipe: it uses that budget.
            let down = self.nodes.iter().find(|n| {
                n.is_active() && !n.spare && !n.retiring && n.core.is_none() && !n.retired
            });
            if let Some(id) = down.map(|n| n.id) {
                self.membership_changes += 1;
                self.wipes_left -= 1;
                self.count_fault("remove");
                self.finish_removal(id);
            }
        } else if owners > u32::from(self.cfg.n) + 1 {
            let id = self.random_node();
            if self.node_mut(id).is_up() {
                self.membership_changes += 1;
                self.count_fault("leave");
                self.leave(id);
            }
        }
    }

    /// Pick two sides: isolate one node, split the id range in two, or random halves.
    fn split(&mut self) -> (Vec<NodeId>, Vec<NodeId>) {
        let mut ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        match self.rng.gen_range(0..3) {
            0 => {
                let i = self.rng.gen_range(0..ids.len());
                let lone = ids.remove(i);
                (vec![lone], ids)
            }
            1 => {
                let cut = self.rng.gen_range(1..ids.len().max(2));
                let b = ids.split_off(cut.min(ids.len()));
                (ids, b)
            }
            _ => {
                ids.shuffle(&mut self.rng);
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for id in ids {
                    if self.rng.gen_bool(0.5) {
                        a.push(id);
                    } else {
                        b.push(id);
                    }
                }
                a.sort();
                b.sort();
                (a, b)
            }
        }
    }
}

/// Whether a stored record holds a value minted by `actor` (a record that does not decode
/// counts as not).
fn own_value(record: &[u8], actor: dynakv_proto::dvv::Actor) -> bool {
    dynakv_proto::codec::decode_object(record)
        .is_ok_and(|o| o.versions().iter().any(|(d, _)| d.actor == actor))
}
