//! The core's one timer table: every wake-up the core asks its driver for.
//!
//! Two kinds of timers live here: the periodic maintenance tick (hinted handoff, anti-entropy,
//! probes, reaping, gossip and transfers run from it; each keeps its own schedule *within* the
//! tick, e.g. backoff of a handoff or the anti-entropy interval) and the timers of pending
//! operations (a write's fallback timer and every operation's deadline).
//! [`crate::NodeCore::poll_timeout`] is the earliest entry.

use std::collections::BTreeSet;

use crate::types::OpId;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The periodic maintenance tick (at most one armed).
    Maintenance,
    /// A timer of a pending operation (a write may have two: fallback and deadline).
    Op(OpId),
}

/// Timers ordered by due time (then by timer, so the order is deterministic).
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    entries: BTreeSet<(u64, Timer)>,
    /// When the maintenance tick is due (also in `entries`).
    maintenance: Option<u64>,
}

impl TimerTable {
    /// Arm `timer` at `at`. Arming the maintenance tick replaces the previous one.
    pub(crate) fn set(&mut self, at: u64, timer: Timer) {
        if timer == Timer::Maintenance {
            if let Some(old) = self.maintenance.replace(at) {
                self.entries.remove(&(old, Timer::Maintenance));
            }
        }
        self.entries.insert((at, timer));
    }

    /// Disarm `timer` at `at` (no-op when it is not armed).
    pub(crate) fn cancel(&mut self, at: u64, timer: Timer) {
        self.entries.remove(&(at, timer));
        if timer == Timer::Maintenance && self.maintenance == Some(at) {
            self.maintenance = None;
        }
    }

    /// The earliest armed timer.
    pub(crate) fn next(&self) -> Option<u64> {
        self.entries.first().map(|(at, _)| *at)
    }

    /// If the maintenance tick is due at `now`, disarm it and say so (the caller re-arms it).
    pub(crate) fn take_maintenance(&mut self, now: u64) -> bool {
        match self.maintenance {
            Some(at) if at <= now => {
                self.cancel(at, Timer::Maintenance);
                true
            }
            _ => false,
        }
    }

    /// The earliest operation timer due at `now`, disarmed; `None` when none is due.
    pub(crate) fn pop_due_op(&mut self, now: u64) -> Option<OpId> {
        let found = self
            .entries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .find_map(|(at, t)| match t {
                Timer::Op(op) => Some((*at, *op)),
                Timer::Maintenance => None,
            });
        let (at, op) = found?;
        self.entries.remove(&(at, Timer::Op(op)));
        Some(op)
    }

    /// Operation timers armed (for tests and status).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_fire_in_time_then_id_order_and_the_tick_is_separate() {
        let mut t = TimerTable::default();
        t.set(50, Timer::Maintenance);
        t.set(30, Timer::Op(9));
        t.set(30, Timer::Op(2));
        t.set(70, Timer::Op(1));
        assert_eq!(t.next(), Some(30));
        assert!(!t.take_maintenance(40));
        assert_eq!(t.pop_due_op(60), Some(2));
        assert_eq!(t.pop_due_op(60), Some(9));
        assert_eq!(
            t.pop_due_op(60),
            None,
            "op 1 is not due and the tick is not an op"
        );
        assert!(t.take_maintenance(60));
        assert!(!t.take_maintenance(60), "taken once");
        assert_eq!(t.next(), Some(70));
    }

    #[test]
    fn re_arming_the_tick_replaces_it_and_cancel_disarms() {
        let mut t = TimerTable::default();
        t.set(10, Timer::Maintenance);
        t.set(20, Timer::Maintenance);
        assert_eq!(t.len(), 1);
        assert_eq!(t.next(), Some(20));
        t.set(5, Timer::Op(3));
        t.cancel(5, Timer::Op(3));
        t.cancel(20, Timer::Maintenance);
        assert_eq!(t.next(), None);
        assert!(!t.take_maintenance(100));
    }
}
