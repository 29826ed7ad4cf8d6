//! Unit tests of the partition map (kept apart so map.rs stays short).

use super::*;

fn set(ids: &[u32]) -> BTreeSet<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

fn ids(v: &[u32]) -> Vec<NodeId> {
    v.iter().copied().map(NodeId).collect()
}

#[test]
fn initial_is_round_robin_over_sorted_members() {
    let map = PartitionMap::initial(8, &set(&[30, 10, 20])).expect("valid");
    assert_eq!(
        map.owners(),
        ids(&[10, 20, 30, 10, 20, 30, 10, 20]).as_slice()
    );
    assert_eq!(map.partition_count(), 8);
    assert_eq!(map.members(), set(&[10, 20, 30]));
    assert_eq!(
        map.counts(),
        [(NodeId(10), 3), (NodeId(20), 3), (NodeId(30), 2)].into()
    );
    assert_eq!(
        map.partitions_of(NodeId(30)),
        vec![PartitionId(2), PartitionId(5)]
    );
    assert!(map.partitions_of(NodeId(99)).is_empty());
}

#[test]
fn initial_rejects_bad_input() {
    assert_eq!(
        PartitionMap::initial(8, &BTreeSet::new()),
        Err(RingError::NoMembers)
    );
    assert_eq!(
        PartitionMap::initial(10, &set(&[1])),
        Err(RingError::InvalidPartitionCount(10))
    );
}

#[test]
fn from_owners_validates_the_length() {
    assert!(PartitionMap::from_owners(ids(&[1; 16])).is_ok());
    assert_eq!(
        PartitionMap::from_owners(ids(&[1; 12])),
        Err(RingError::InvalidPartitionCount(12))
    );
    assert_eq!(
        PartitionMap::from_owners(Vec::new()),
        Err(RingError::InvalidPartitionCount(0))
    );
}

#[test]
fn decoding_checks_the_invariant() {
    let bad = RawPartitionMap {
        q: 16,
        owners: ids(&[1; 8]),
    };
    assert_eq!(
        PartitionMap::try_from(bad),
        Err(RingError::WrongLength {
            expected: 16,
            actual: 8
        })
    );
    let bad_q = RawPartitionMap {
        q: 6,
        owners: ids(&[1; 6]),
    };
    assert_eq!(
        PartitionMap::try_from(bad_q),
        Err(RingError::InvalidPartitionCount(6))
    );
    let good = RawPartitionMap {
        q: 8,
        owners: ids(&[1; 8]),
    };
    assert!(PartitionMap::try_from(good).is_ok());
}

#[test]
fn owner_wraps_out_of_range_partitions() {
    let map = PartitionMap::initial(8, &set(&[1, 2, 3])).expect("valid");
    assert_eq!(map.owner(PartitionId(9)), map.owner(PartitionId(1)));
    assert_eq!(map.owner(PartitionId(u16::MAX)), map.owner(PartitionId(7)));
    assert_eq!(map.preference_list(PartitionId(8), 2), ids(&[1, 2]));
}

#[test]
fn preference_list_skips_repeated_owners() {
    let map = PartitionMap::from_owners(ids(&[1, 1, 2, 2, 1, 3, 3, 3])).expect("valid");
    assert_eq!(map.preference_list(PartitionId(0), 3), ids(&[1, 2, 3]));
    assert_eq!(map.preference_list(PartitionId(6), 3), ids(&[3, 1, 2]));
    assert_eq!(map.preference_list(PartitionId(0), 5), ids(&[1, 2, 3]));
    assert!(map.preference_list(PartitionId(0), 0).is_empty());
    assert_eq!(map.walk(PartitionId(3)), ids(&[2, 1, 3]));
}

#[test]
fn walk_extends_the_preference_list() {
    let map = PartitionMap::initial(64, &set(&[1, 2, 3, 4, 5])).expect("valid");
    for p in 0..64 {
        let walk = map.walk(PartitionId(p));
        assert_eq!(walk.len(), 5);
        for n in 0..=6 {
            let list = map.preference_list(PartitionId(p), n);
            assert_eq!(list.as_slice(), &walk[..n.min(5)]);
        }
    }
}

#[test]
fn replicated_partitions_match_preference_lists() {
    let map = PartitionMap::initial(16, &set(&[1, 2, 3, 4])).expect("valid");
    // Round-robin with 4 nodes: node 1 is primary of 0,4,8,12 and replica of the 2 before each.
    let got: Vec<u16> = map
        .replicated_partitions(NodeId(1), 3)
        .iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(got, vec![0, 2, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15]);
    assert_eq!(
        map.replicated_partitions(NodeId(1), 1),
        map.partitions_of(NodeId(1))
    );
}

#[test]
fn moves_lists_changed_owners() {
    let a = PartitionMap::from_owners(ids(&[1, 2, 3, 1, 2, 3, 1, 2])).expect("valid");
    let b = PartitionMap::from_owners(ids(&[1, 2, 4, 1, 2, 3, 4, 2])).expect("valid");
    let expected = vec![
        Move {
            partition: PartitionId(2),
            from: NodeId(3),
            to: NodeId(4),
        },
        Move {
            partition: PartitionId(6),
            from: NodeId(1),
            to: NodeId(4),
        },
    ];
    assert_eq!(a.moves(&b), expected);
    assert_eq!(a.try_moves(&b), Ok(expected));
    assert!(a.moves(&a).is_empty());
    let big = PartitionMap::initial(16, &set(&[1])).expect("valid");
    assert_eq!(
        a.try_moves(&big),
        Err(RingError::WrongLength {
            expected: 8,
            actual: 16
        })
    );
}

#[test]
fn spacing_violations_counts_close_pairs() {
    let spaced = PartitionMap::from_owners(ids(&[1, 2, 3, 1, 2, 3, 4, 5])).expect("valid");
    assert_eq!(spaced.spacing_violations(3), 0);
    let clumped = PartitionMap::from_owners(ids(&[1, 1, 2, 3, 1, 2, 3, 4])).expect("valid");
    // Only partitions 0 and 1 (both node 1) are closer than 3; 1 and 4 are exactly 3 apart.
    assert_eq!(clumped.spacing_violations(3), 1);
    assert_eq!(clumped.spacing_violations(1), 0);
}
