//! Gossipers end to end over the simulated network: joining through a seed, leaving, removal,
//! concurrent changes, failure detection.

mod common;

use common::{addr, Sim, PARAMS};
use dynakv_gossip::{
    Change, ClusterState, GossipConfig, GossipError, GossipEvent, GossipMsg, Gossiper, Status,
};
use dynakv_ring::NodeId;

fn status_everywhere(sim: &Sim, node: u32) -> Vec<Option<Status>> {
    sim.nodes
        .values()
        .map(|g| {
            g.state()
                .and_then(|s| s.member(NodeId(node)))
                .map(|m| m.status)
        })
        .collect()
}

#[test]
fn a_new_node_joins_through_a_seed_and_becomes_valid() {
    let mut sim = Sim::cluster(5, 1, GossipConfig::default());
    sim.round();
    let mut new = Gossiper::new(NodeId(10), addr(10), 1, 99, GossipConfig::default());
    new.add_seed(NodeId(2), addr(2));
    assert_eq!(new.addr_of(NodeId(2)), Some(addr(2).as_str()));
    sim.nodes.insert(NodeId(10), new);

    let rounds = sim.rounds_until(20, |s| {
        s.agreed()
            && s.nodes
                .values()
                .all(|g| g.state().is_some_and(|st| st.members().len() == 6))
    });
    assert!(rounds <= 6, "{rounds} rounds");
    let events = sim.node(10).take_events();
    assert!(
        matches!(events.first(), Some(GossipEvent::Joined { .. })),
        "{events:?}"
    );
    let state = sim.node(10).state().cloned().expect("joined");
    assert_eq!(
        state.member(NodeId(10)).map(|m| m.status),
        Some(Status::Joining)
    );
    assert_eq!(
        state.map().version.proposer,
        NodeId(2),
        "the seed staged the join"
    );
    assert_eq!(state.map().map.partitions_of(NodeId(10)).len(), 10);
    // Every old member saw the map change (to schedule transfers).
    for id in 0..5 {
        let events = sim.node(id).take_events();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, GossipEvent::MapChanged { previous, .. }
                if previous.partitions_of(NodeId(10)).is_empty())),
            "node {id}: {events:?}"
        );
    }

    // Transfers done (the node's business): it marks itself valid.
    let now = sim.now;
    let out = sim
        .node(10)
        .stage(now, Change::MarkValid(NodeId(10)))
        .expect("valid");
    sim.deliver(NodeId(10), out);
    sim.rounds_until(10, Sim::agreed);
    assert!(status_everywhere(&sim, 10)
        .iter()
        .all(|s| *s == Some(Status::Valid)));
}

#[test]
fn a_leaving_node_hands_off_and_is_removed() {
    let mut sim = Sim::cluster(4, 2, GossipConfig::default());
    sim.round();
    let now = sim.now;
    let out = sim
        .node(3)
        .stage(now, Change::Leave(NodeId(3)))
        .expect("leave");
    sim.deliver(NodeId(3), out);
    sim.rounds_until(10, Sim::agreed);
    let map = sim
        .node(0)
        .state()
        .map(|s| s.map().map.clone())
        .expect("state");
    assert!(map.partitions_of(NodeId(3)).is_empty());
    assert_eq!(map.counts().len(), 3);

    let now = sim.now;
    let out = sim
        .node(3)
        .stage(now, Change::FinishLeave(NodeId(3)))
        .expect("finish");
    sim.deliver(NodeId(3), out);
    sim.rounds_until(10, Sim::agreed);
    assert!(status_everywhere(&sim, 3)
        .iter()
        .all(|s| *s == Some(Status::Removed)));
    // The removed node learns it (and should shut down); the others stop watching it.
    let events = sim.node(3).take_events();
    assert!(events.contains(&GossipEvent::MemberChanged {
        node: NodeId(3),
        status: Status::Removed
    }));
    let now = sim.now;
    assert!(!sim.node(0).up_set(now).contains(&NodeId(3)));
}

#[test]
fn concurrent_changes_on_different_nodes_converge_to_one_map() {
    let mut sim = Sim::cluster(6, 3, GossipConfig::default());
    sim.round();
    let now = sim.now;
    // Three changes staged on three nodes before any of them spreads.
    let a = sim
        .node(0)
        .stage(now, Change::Leave(NodeId(5)))
        .expect("leave");
    let b = sim
        .node(1)
        .stage(
            now,
            Change::Join {
                node: NodeId(20),
                addr: addr(20),
            },
        )
        .expect("join");
    let c = sim
        .node(2)
        .stage(now, Change::Remove(NodeId(4)))
        .expect("remove");
    for (from, out) in [(0, a), (1, b), (2, c)] {
        sim.deliver(NodeId(from), out);
    }
    sim.rounds_until(10, Sim::agreed);
    let state = sim.node(0).state().cloned().expect("state");
    assert!(state.is_reconciled());
    let owning: Vec<u32> = state.owning_members().iter().map(|n| n.0).collect();
    assert_eq!(owning, [0, 1, 2, 3, 20]);
    assert_eq!(state.map().planned_for, state.owning_members());
    for (_, count) in state.map().map.counts() {
        assert!((12..=13).contains(&count), "balanced: {count}");
    }
}

#[test]
fn a_silent_node_is_down_locally_but_keeps_its_partitions() {
    let mut sim = Sim::cluster(5, 4, GossipConfig::default());
    for _ in 0..20 {
        sim.round();
    }
    let now = sim.now;
    assert!(sim.nodes.values().all(|g| g.up_set(now).len() == 5));
    sim.crashed.insert(NodeId(4));
    let rounds = sim.rounds_until(20, |s| {
        (0..4).all(|i| !s.nodes[&NodeId(i)].is_up(NodeId(4), s.now))
    });
    assert!((2..=6).contains(&rounds), "down after {rounds} rounds");
    let now = sim.now;
    assert!(sim.node(0).phi(NodeId(4), now) >= 8.0);
    let state = sim.node(0).state().cloned().expect("state");
    assert_eq!(
        state.member(NodeId(4)).map(|m| m.status),
        Some(Status::Valid)
    );
    assert_eq!(state.map().map.partitions_of(NodeId(4)).len(), 12);

    // It restarts from its persisted state with a new generation and is up again.
    let old = sim.node(4).state().cloned().expect("state");
    let now = sim.now;
    let restarted =
        Gossiper::with_state(NodeId(4), old, 2, 77, GossipConfig::default(), now).expect("restart");
    sim.nodes.insert(NodeId(4), restarted);
    sim.crashed.clear();
    sim.rounds_until(10, |s| {
        (0..4).all(|i| s.nodes[&NodeId(i)].is_up(NodeId(4), s.now))
    });
    let hb = sim
        .node(0)
        .state()
        .map(|s| s.heartbeats()[&NodeId(4)])
        .expect("hb");
    assert_eq!(hb.generation, 2);

    // A restart that forgets to raise the generation still gets a higher one from the state.
    let old = sim.node(4).state().cloned().expect("state");
    let now = sim.now;
    let again =
        Gossiper::with_state(NodeId(4), old, 2, 78, GossipConfig::default(), now).expect("restart");
    assert_eq!(again.generation(), 3);
}

#[test]
fn joins_are_refused_for_removed_or_taken_ids() {
    let mut sim = Sim::cluster(3, 5, GossipConfig::default());
    let now = sim.now;
    let out = sim
        .node(0)
        .stage(now, Change::Remove(NodeId(2)))
        .expect("remove");
    sim.deliver(NodeId(0), out);
    sim.rounds_until(10, Sim::agreed);

    let reply = sim
        .node(0)
        .handle(
            now,
            NodeId(2),
            GossipMsg::JoinRequest {
                node: NodeId(2),
                addr: addr(2),
            },
        )
        .expect("handled");
    assert!(
        matches!(&reply[..], [(NodeId(2), GossipMsg::JoinRefused { reason })]
        if reason.contains("removed"))
    );
    let reply = sim
        .node(0)
        .handle(
            now,
            NodeId(1),
            GossipMsg::JoinRequest {
                node: NodeId(1),
                addr: addr(9),
            },
        )
        .expect("handled");
    assert!(
        matches!(&reply[..], [(_, GossipMsg::JoinRefused { reason })] if reason.contains("in use"))
    );

    // The refused node reports it and drops the seed.
    let mut g = Gossiper::new(NodeId(2), addr(2), 2, 1, GossipConfig::default());
    g.add_seed(NodeId(0), addr(0));
    let (to, req) = g.tick(0).remove(0);
    for (_, m) in sim.node(to.0).handle(0, NodeId(2), req).expect("handled") {
        g.handle(0, to, m).expect("handled");
    }
    assert!(matches!(
        &g.take_events()[..],
        [GossipEvent::JoinRefused { .. }]
    ));
    assert!(g.tick(1).is_empty(), "no seed left to ask");
    assert!(g.state().is_none());
}

#[test]
fn bad_messages_are_refused_without_harm() {
    let mut sim = Sim::cluster(3, 6, GossipConfig::default());
    let before = sim.node(0).state().cloned();
    // A digest of another cluster shape.
    let other = ClusterState::new(
        dynakv_gossip::ClusterParams {
            partitions: 128,
            replicas: 3,
        },
        &[(NodeId(0), addr(0))].into(),
    )
    .expect("state");
    let err = sim
        .node(0)
        .handle(0, NodeId(1), GossipMsg::Syn(other.digest()));
    assert!(matches!(err, Err(GossipError::ParamsMismatch { .. })));
    let err = sim
        .node(0)
        .handle(0, NodeId(1), GossipMsg::Push(other.membership_delta()));
    assert!(matches!(err, Err(GossipError::Malformed(_))));
    let long = GossipMsg::JoinRequest {
        node: NodeId(1),
        addr: "x".repeat(300),
    };
    assert!(matches!(
        sim.node(0).handle(0, NodeId(1), long),
        Err(GossipError::InvalidAddr(_))
    ));
    assert_eq!(sim.node(0).state().cloned(), before);
    // Staging before joining is refused.
    let mut lonely = Gossiper::new(NodeId(9), addr(9), 1, 1, GossipConfig::default());
    assert_eq!(
        lonely.stage(0, Change::Leave(NodeId(9))),
        Err(GossipError::NotJoined)
    );
    let _ = PARAMS;
}
