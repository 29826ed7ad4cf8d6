//! The claim/rebalance planner: current map + new member set -> balanced map, fewest moves.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::error::RingError;
use crate::ids::NodeId;
use crate::map::PartitionMap;

/// The planner tries to keep one owner out of any run of this many consecutive partitions
/// (the usual replication factor N = 3), so that preference lists are consecutive owners.
pub const SPACING_WINDOW: usize = 3;

/// Plans the partition map for a new member set, starting from `current`.
///
/// Call it whenever the membership changes (a node joins, leaves or is removed); the moves to
/// carry out are then `current.moves(&result)`. Errors: an empty `members` gives
/// [`RingError::NoMembers`]. The result is a pure function of the two inputs.
///
/// # Algorithm
///
/// 1. **Targets.** With `m` members and `Q` partitions, `Q % m` members get `ceil(Q/m)`
///    partitions and the rest `floor(Q/m)`. The ceil slots go to the members that currently own
///    the most (ties: smaller `NodeId`).
/// 2. **Donors and receivers.** Partitions owned by non-members are orphans. A member above its
///    target is a donor of the excess, one below is a receiver of the shortfall. No member is
///    both, so a partition only ever moves from a departed or donor node to a receiver.
/// 3. **Placement.** One partition at a time, among the orphans and the partitions of donors
///    with excess left, move the one whose new owner creates the fewest same-owner pairs within
///    [`SPACING_WINDOW`] minus the pairs its old owner loses; ties prefer fewer new pairs, then
///    orphans, then the lower partition. Its receiver is the one with the most shortfall
///    (ties: smaller `NodeId`) among those that would create the fewest pairs.
///
/// # Guarantees (tested as properties in `ring/tests/planner.rs`)
///
/// - **Balance**: every member owns `floor(Q/m)` or `ceil(Q/m)` partitions. If `m > Q`, `Q`
///   members own one partition each and the other `m - Q` own none (they hold no data and are
///   absent from [`PartitionMap::members`]; they get partitions as soon as `m <= Q`).
/// - **Fewest moves**: no balanced map is reachable with fewer moves. The moves are exactly
///   `Q - sum(min(c_i, t_i))` (`c_i` current, `t_i` target count), and giving the ceil slots to
///   the largest `c_i` maximises that sum (exchange argument: swapping a ceil slot from a larger
///   to a smaller `c` changes the sum by `[c_small > floor] - [c_large > floor] <= 0`).
/// - **Single join or leave from a balanced map**: at most `ceil(Q/m_max)` moves, `m_max` the
///   larger of the old and new member counts, i.e. the bound with **+0** slack. A join moves
///   exactly `floor(Q/(m+1))` partitions (0 once `m >= Q`), all to the new node; a leave moves
///   exactly the departed node's partitions (`<= ceil(Q/m)`). No partition moves between two
///   nodes that are members before and after: every staying member is already within its new
///   target (the ceil slots sit on the members that own `ceil(Q/m)` already).
/// - **Spacing** is best effort and never bought with extra moves. Each placement changes the
///   number of same-owner pairs (among placed partitions) within [`SPACING_WINDOW`] by exactly
///   its score, so picking the lowest score keeps that count as low as the greedy can. Joins
///   have not been seen to increase it (a property test checks this), and growing one node at a
///   time keeps every window distinct from 4 nodes on. Leaves can leave pairs, since only the departed node's partitions move.
///   The round-robin initial map has a pair at the wrap when `Q % m` is 1 or 2. Distinct
///   preference lists never depend on spacing: [`PartitionMap::preference_list`] skips repeats.
///
/// Cost: `O(moves * Q)` in the worst case (about 1.5 ms for one join at `Q = 1024`, 160 ms to
/// spread 4096 partitions from 1 node to 64; see docs/RING.md); it runs on membership changes only.
pub fn plan(current: &PartitionMap, members: &BTreeSet<NodeId>) -> Result<PartitionMap, RingError> {
    if members.is_empty() {
        return Err(RingError::NoMembers);
    }
    let q = usize::from(current.partition_count());
    let counts = current.counts();
    let targets = targets(q, members, &counts);

    let mut state = State {
        owners: current.owners().to_vec(),
        orphan: current
            .owners()
            .iter()
            .map(|o| !members.contains(o))
            .collect(),
        excess: BTreeMap::new(),
        need: BTreeMap::new(),
        by_need: BTreeSet::new(),
    };
    for (&node, &target) in &targets {
        let count = counts.get(&node).copied().unwrap_or(0);
        if count > target {
            state.excess.insert(node, count - target);
        } else if count < target {
            state.need.insert(node, target - count);
            state.by_need.insert((Reverse(target - count), node));
        }
    }

    // Total shortfall == orphans + total excess (both sides sum to Q), so each step finds a
    // candidate partition and a receiver until every receiver reaches its target.
    while let Some((p, to)) = state.best_move() {
        state.apply(p, to);
    }
    Ok(PartitionMap::from_checked(
        current.partition_count(),
        state.owners,
    ))
}

/// Per-member target counts (step 1 of [`plan`]).
fn targets(
    q: usize,
    members: &BTreeSet<NodeId>,
    counts: &BTreeMap<NodeId, usize>,
) -> BTreeMap<NodeId, usize> {
    let m = members.len();
    let (base, extra) = (q / m, q % m);
    let mut order: Vec<NodeId> = members.iter().copied().collect();
    // The largest current owners take the ceil slots: they then give the least (or nothing).
    order.sort_by_key(|n| (Reverse(counts.get(n).copied().unwrap_or(0)), *n));
    order
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, base + usize::from(i < extra)))
        .collect()
}

/// The planner's working state while it places partitions.
struct State {
    /// Tentative owners; an orphan keeps its departed owner until it is placed.
    owners: Vec<NodeId>,
    /// `orphan[p]`: `owners[p]` is not a member and `p` must be placed.
    orphan: Vec<bool>,
    /// Donors and how many partitions each must still give.
    excess: BTreeMap<NodeId, usize>,
    /// Receivers and how many partitions each must still take.
    need: BTreeMap<NodeId, usize>,
    /// Receivers by descending shortfall, then ascending id: the preferred receiver first.
    by_need: BTreeSet<(Reverse<usize>, NodeId)>,
}

/// Ranking of a candidate move; smaller is better.
type Score = (isize, usize, bool, usize);

impl State {
    /// The best (partition, receiver) pair to place next, or `None` when done.
    fn best_move(&self) -> Option<(usize, NodeId)> {
        if self.by_need.is_empty() {
            return None;
        }
        let mut best: Option<(Score, usize, NodeId)> = None;
        for p in 0..self.owners.len() {
            let from = self.owners[p];
            let is_orphan = self.orphan[p];
            if !is_orphan && !self.excess.contains_key(&from) {
                continue;
            }
            let relief = if is_orphan { 0 } else { self.pairs(p, from) };
            // `pairs >= 0`, so this bound is <= the real score: skipping the receiver search
            // when it cannot win keeps the result identical and makes most steps cheap.
            let bound: Score = (-(relief as isize), 0, !is_orphan, p);
            if matches!(&best, Some((b, _, _)) if bound >= *b) {
                continue;
            }
            let (pairs, to) = self.best_receiver(p);
            let score = (pairs as isize - relief as isize, pairs, !is_orphan, p);
            let better = match &best {
                Some((b, _, _)) => score < *b,
                None => true,
            };
            if better {
                best = Some((score, p, to));
            }
        }
        best.map(|(_, p, to)| (p, to))
    }

    /// The receiver for partition `p`: fewest same-owner pairs created, then the preferred
    /// receiver order. Only owners of the `2 * (SPACING_WINDOW - 1)` neighbours can have pairs,
    /// so scanning one more receiver than that always reaches a pair-free one if it exists.
    fn best_receiver(&self, p: usize) -> (usize, NodeId) {
        let mut best = (usize::MAX, NodeId(0));
        for &(_, node) in self.by_need.iter().take(2 * (SPACING_WINDOW - 1) + 1) {
            let pairs = self.pairs(p, node);
            if pairs < best.0 {
                best = (pairs, node);
                if pairs == 0 {
                    break;
                }
            }
        }
        best
    }

    /// How many placed partitions within `SPACING_WINDOW - 1` of `p` are owned by `node`.
    fn pairs(&self, p: usize, node: NodeId) -> usize {
        let q = self.owners.len();
        (1..SPACING_WINDOW)
            .flat_map(|d| [(p + d) % q, (p + q - d) % q])
            .filter(|&i| !self.orphan[i] && self.owners[i] == node)
            .count()
    }

    /// Moves partition `p` to receiver `to` and updates the books.
    fn apply(&mut self, p: usize, to: NodeId) {
        if self.orphan[p] {
            self.orphan[p] = false;
        } else if let Some(left) = self.excess.get_mut(&self.owners[p]) {
            *left -= 1;
            if *left == 0 {
                self.excess.remove(&self.owners[p]);
            }
        }
        self.owners[p] = to;
        if let Some(need) = self.need.get_mut(&to) {
            self.by_need.remove(&(Reverse(*need), to));
            *need -= 1;
            if *need == 0 {
                self.need.remove(&to);
            } else {
                self.by_need.insert((Reverse(*need), to));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> BTreeSet<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn empty_member_set_is_an_error() {
        let map = PartitionMap::initial(64, &set(&[1, 2])).expect("valid");
        assert_eq!(plan(&map, &BTreeSet::new()), Err(RingError::NoMembers));
    }

    #[test]
    fn ceil_slots_go_to_the_largest_owners() {
        let counts: BTreeMap<NodeId, usize> =
            [(NodeId(1), 5), (NodeId(2), 9), (NodeId(3), 2)].into();
        let t = targets(16, &set(&[1, 2, 3]), &counts);
        assert_eq!(t, [(NodeId(1), 5), (NodeId(2), 6), (NodeId(3), 5)].into());
    }

    #[test]
    fn same_members_means_no_moves() {
        let map = PartitionMap::initial(64, &set(&[3, 1, 2])).expect("valid");
        assert_eq!(plan(&map, &set(&[1, 2, 3])).expect("plan"), map);
    }
}
