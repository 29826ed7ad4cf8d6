//! Property tests of the claim/rebalance planner: balance, distinct preference lists, fewest
//! moves, the single join/leave bound, spacing, determinism, and a golden map.

use std::collections::{BTreeMap, BTreeSet};

use dynakv_ring::{plan, Move, NodeId, PartitionId, PartitionMap, RingError, SPACING_WINDOW};
use proptest::prelude::*;

/// A membership change applied to the current member set.
#[derive(Debug, Clone)]
enum Op {
    /// A node with this id joins (no-op if already a member).
    Join(u32),
    /// The member at this index (modulo the member count) leaves, unless it is the last one.
    Leave(usize),
    /// Several nodes join and leave at once.
    Replace(Vec<u32>, Vec<usize>),
}

fn apply(members: &mut BTreeSet<NodeId>, op: &Op) {
    let leave = |members: &mut BTreeSet<NodeId>, i: usize| {
        if members.len() > 1 {
            if let Some(&n) = members.iter().nth(i % members.len()) {
                members.remove(&n);
            }
        }
    };
    match op {
        Op::Join(id) => {
            members.insert(NodeId(*id));
        }
        Op::Leave(i) => leave(members, *i),
        Op::Replace(joins, leaves) => {
            for &i in leaves {
                leave(members, i);
            }
            members.extend(joins.iter().copied().map(NodeId));
        }
    }
}

/// Node ids: mostly small (so joins collide with members and leaves hit real ones), some huge.
fn node_id() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 0u32..40, 1 => any::<u32>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => node_id().prop_map(Op::Join),
        3 => any::<usize>().prop_map(Op::Leave),
        1 => (prop::collection::vec(node_id(), 0..4), prop::collection::vec(any::<usize>(), 0..4))
            .prop_map(|(j, l)| Op::Replace(j, l)),
    ]
}

fn partition_count() -> impl Strategy<Value = u16> {
    (3u32..=9).prop_map(|k| 1u16 << k) // 8..=512
}

fn members(max: usize) -> impl Strategy<Value = BTreeSet<NodeId>> {
    prop::collection::btree_set(node_id().prop_map(NodeId), 1..max)
}

fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// Every member owns floor(Q/m) or ceil(Q/m); with m > Q, each owns 0 or 1. Nobody else owns.
fn assert_balanced(map: &PartitionMap, members: &BTreeSet<NodeId>) {
    let q = usize::from(map.partition_count());
    let m = members.len();
    let counts = map.counts();
    assert!(
        counts.keys().all(|n| members.contains(n)),
        "a non-member owns partitions"
    );
    assert_eq!(map.owners().len(), q);
    for n in members {
        let c = counts.get(n).copied().unwrap_or(0);
        assert!(
            c == q / m || c == ceil_div(q, m),
            "{n} owns {c} of {q} with {m} members"
        );
    }
}

/// Preference lists are distinct and as long as possible, for every partition and n in 1..=5.
fn assert_preference_lists(map: &PartitionMap, members: &BTreeSet<NodeId>) {
    let owning = members.len().min(usize::from(map.partition_count()));
    for p in 0..map.partition_count() {
        for n in 1..=5 {
            let list = map.preference_list(PartitionId(p), n);
            let distinct: BTreeSet<NodeId> = list.iter().copied().collect();
            assert_eq!(distinct.len(), list.len(), "repeated node in {list:?}");
            assert_eq!(list.len(), n.min(owning));
            assert_eq!(list[0], map.owner(PartitionId(p)));
        }
    }
}

/// The fewest moves any balanced map needs: the ceil slots on the largest current owners.
fn move_lower_bound(old: &PartitionMap, members: &BTreeSet<NodeId>) -> usize {
    let q = usize::from(old.partition_count());
    let counts = old.counts();
    let mut current: Vec<usize> = members
        .iter()
        .map(|n| counts.get(n).copied().unwrap_or(0))
        .collect();
    current.sort_unstable_by(|a, b| b.cmp(a));
    let (base, extra) = (q / members.len(), q % members.len());
    let kept: usize = current
        .iter()
        .enumerate()
        .map(|(i, &c)| c.min(base + usize::from(i < extra)))
        .sum();
    q - kept
}

/// Checks everything that must hold for any plan, and returns the new map.
fn checked_plan(old: &PartitionMap, members: &BTreeSet<NodeId>) -> PartitionMap {
    let new = plan(old, members).expect("non-empty member set");
    assert_eq!(
        plan(old, members).expect("again"),
        new,
        "plan is not deterministic"
    );
    assert_balanced(&new, members);
    assert_preference_lists(&new, members);
    let moves = old.moves(&new);
    assert_eq!(
        moves.len(),
        move_lower_bound(old, members),
        "not the fewest moves"
    );
    // Pure donors and pure receivers: nobody both gives and receives.
    let givers: BTreeSet<NodeId> = moves.iter().map(|m| m.from).collect();
    let takers: BTreeSet<NodeId> = moves.iter().map(|m| m.to).collect();
    assert!(
        givers.is_disjoint(&takers),
        "a node both gives and receives: {moves:?}"
    );
    assert!(takers.iter().all(|n| members.contains(n)));
    new
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Balance, distinct preference lists, fewest moves and determinism after any sequence.
    #[test]
    fn any_sequence_of_plans_stays_balanced(
        q in partition_count(),
        start in members(12),
        ops in prop::collection::vec(op(), 1..10),
    ) {
        let mut members = start;
        let mut map = PartitionMap::initial(q, &members).expect("valid");
        for op in &ops {
            apply(&mut members, op);
            map = checked_plan(&map, &members);
        }
    }

    /// From any map at all (even unbalanced, with strangers), one plan reaches balance.
    #[test]
    fn any_starting_map_is_rebalanced(
        owners in prop::collection::vec(0u32..20, 64),
        target in members(20),
    ) {
        let old = PartitionMap::from_owners(owners.into_iter().map(NodeId).collect())
            .expect("64 is valid");
        checked_plan(&old, &target);
    }

    /// One join or one leave from a balanced map moves at most ceil(Q / m_max) partitions, all
    /// to the new node or all from the departed one.
    #[test]
    fn single_join_or_leave_moves_at_most_one_share(
        q in (3u32..=10).prop_map(|k| 1u16 << k),
        ops in prop::collection::vec(op(), 0..6),
        start in members(10),
        change in op(),
    ) {
        let mut members = start;
        let mut map = PartitionMap::initial(q, &members).expect("valid");
        for op in &ops {
            apply(&mut members, op);
            map = plan(&map, &members).expect("non-empty");
        }
        let before = members.clone();
        let change = match change {
            Op::Replace(..) => Op::Leave(0),
            other => other,
        };
        apply(&mut members, &change);
        let next = checked_plan(&map, &members);
        let moves = map.moves(&next);
        let q = usize::from(q);
        let m_max = before.len().max(members.len());
        prop_assert!(moves.len() <= ceil_div(q, m_max), "{} moves > ceil({q}/{m_max})", moves.len());
        let joined: Vec<NodeId> = members.difference(&before).copied().collect();
        let left: Vec<NodeId> = before.difference(&members).copied().collect();
        let stays = |n: &NodeId| before.contains(n) && members.contains(n);
        prop_assert!(moves.iter().all(|m: &Move| !(stays(&m.from) && stays(&m.to))));
        if let [new] = joined.as_slice() {
            prop_assert_eq!(moves.len(), if members.len() <= q { q / members.len() } else { 0 });
            prop_assert!(moves.iter().all(|m| m.to == *new));
        }
        if let [gone] = left.as_slice() {
            prop_assert_eq!(moves.len(), map.partitions_of(*gone).len());
            prop_assert!(moves.iter().all(|m| m.from == *gone));
        }
    }

    /// With more members than partitions every member owns 0 or 1 partition.
    #[test]
    fn more_members_than_partitions(start in members(30), ops in prop::collection::vec(op(), 1..8)) {
        let mut members = start;
        let mut map = PartitionMap::initial(8, &members).expect("valid");
        for op in &ops {
            apply(&mut members, op);
            map = checked_plan(&map, &members);
            prop_assert!(map.counts().values().all(|&c| c == 1 || members.len() <= 8));
        }
    }

    /// Joins never make spacing worse: each move is chosen to add no more same-owner pairs
    /// within the window than it removes, and from a spaced map (>= 3 nodes) they keep it spaced.
    #[test]
    fn joins_never_worsen_spacing(
        q in partition_count(),
        first in node_id(),
        joins in prop::collection::vec(node_id(), 1..12),
    ) {
        let mut members: BTreeSet<NodeId> = [NodeId(first)].into();
        let mut map = PartitionMap::initial(q, &members).expect("valid");
        for id in joins {
            members.insert(NodeId(id));
            let next = plan(&map, &members).expect("non-empty");
            let (before, after) =
                (map.spacing_violations(SPACING_WINDOW), next.spacing_violations(SPACING_WINDOW));
            prop_assert!(after <= before, "{before} -> {after} pairs");
            map = next;
        }
    }
}

#[test]
fn empty_member_set_is_rejected() {
    let members: BTreeSet<NodeId> = [NodeId(1)].into();
    let map = PartitionMap::initial(64, &members).expect("valid");
    assert_eq!(plan(&map, &BTreeSet::new()), Err(RingError::NoMembers));
}

/// Growing one node at a time keeps every window of 3 partitions distinct (from 3 nodes on).
#[test]
fn growing_one_by_one_keeps_windows_distinct() {
    for q in [16u16, 64, 256, 1024, 4096] {
        let mut members: BTreeSet<NodeId> = [NodeId(7)].into();
        let mut map = PartitionMap::initial(q, &members).expect("valid");
        for id in [3u32, 100, 1, 55, 2, 9, 40, 12, 8, 77, 5] {
            members.insert(NodeId(id));
            map = checked_plan(&map, &members);
            if members.len() >= 4 {
                assert_eq!(
                    map.spacing_violations(SPACING_WINDOW),
                    0,
                    "q={q} m={}",
                    members.len()
                );
            }
        }
    }
}

/// A fixed input and its expected output: if this changes, nodes running different builds would
/// compute different maps from the same membership, so change it only with a migration plan.
#[test]
fn golden_map() {
    let ids = |v: &[u32]| v.iter().copied().map(NodeId).collect::<BTreeSet<_>>();
    let map = PartitionMap::initial(16, &ids(&[10, 20, 30])).expect("valid");
    let grown = plan(&map, &ids(&[10, 20, 30, 40])).expect("plan");
    let shrunk = plan(&grown, &ids(&[10, 30, 40])).expect("plan");
    let owners = |m: &PartitionMap| m.owners().iter().map(|n| n.0).collect::<Vec<_>>();
    assert_eq!(
        owners(&map),
        [10, 20, 30, 10, 20, 30, 10, 20, 30, 10, 20, 30, 10, 20, 30, 10]
    );
    assert_eq!(owners(&grown), GOLDEN_GROWN);
    assert_eq!(owners(&shrunk), GOLDEN_SHRUNK);
    let counts: BTreeMap<NodeId, usize> = shrunk.counts();
    // 20 left; the ceil slot went to the smallest id among the tied largest owners.
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [6, 5, 5]);
}

const GOLDEN_GROWN: [u32; 16] = [
    40, 20, 30, 40, 20, 30, 10, 40, 30, 10, 20, 40, 10, 20, 30, 10,
];
const GOLDEN_SHRUNK: [u32; 16] = [
    40, 10, 30, 40, 10, 30, 10, 40, 30, 10, 30, 40, 10, 40, 30, 10,
];

/// A larger golden case, pinned by a checksum of the owner list: Q = 1024, nodes joining in an
/// odd order and two leaving. Any change of targets, tie-breaks or placement changes it.
#[test]
fn golden_checksum_q1024() {
    let mut members: BTreeSet<NodeId> = [NodeId(500)].into();
    let mut map = PartitionMap::initial(1024, &members).expect("valid");
    for id in [17u32, 3, 4_000_000_000, 42, 8, 99, 1] {
        members.insert(NodeId(id));
        map = plan(&map, &members).expect("plan");
    }
    for id in [42u32, 500] {
        members.remove(&NodeId(id));
        map = plan(&map, &members).expect("plan");
    }
    let bytes: Vec<u8> = map
        .owners()
        .iter()
        .flat_map(|n| n.0.to_le_bytes())
        .collect();
    assert_eq!(dynakv_ring::key_hash(&bytes), GOLDEN_Q1024_CHECKSUM);
}

const GOLDEN_Q1024_CHECKSUM: u64 = 10_558_523_497_303_453_118;
