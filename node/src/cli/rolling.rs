//! `dynakv safe-to-stop --node ADDR`: may this node be stopped now (a rolling restart, an
//! upgrade, maintenance) without taking any key below its read or write quorum, or cutting a
//! partition transfer or a membership change short? Exit 0 when safe, 1 when not; one JSON
//! line with the reasons either way.

use dynakv_client::StatusReport;

use super::StatusArgs;

/// `dynakv safe-to-stop`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    // Exactly the node asked about: failing over to another (as other commands do with a
    // list of nodes) would answer for the wrong one.
    let [addr] = args.target.nodes[..] else {
        anyhow::bail!(
            "safe-to-stop is about one node: pass --node ADDR with one address (got {})",
            args.target.nodes.len()
        );
    };
    let client = dynakv_client::Client::direct(addr, &args.target.credentials()?)?;
    let reply = client.status().await;
    client.close().await;
    let report = reply?;
    let (reasons, notes) = verdict(&report);
    println!(
        "{}",
        serde_json::json!({
            "node": report.node.0,
            "safe": reasons.is_empty(),
            "reasons": reasons,
            "notes": notes,
        })
    );
    if !reasons.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// Why stopping the node that sent `s` is not safe now (empty: it is), and what is worth
/// knowing anyway.
pub fn verdict(s: &StatusReport) -> (Vec<String>, Vec<String>) {
    let mut reasons = Vec::new();
    let mut notes = Vec::new();
    let me = s.members.iter().find(|m| m.id == s.node);
    match me.and_then(|m| m.membership.as_deref()) {
        Some("valid") => {}
        Some(other) => reasons.push(format!(
            "node {} is {other}: let the membership change finish first",
            s.node
        )),
        None => reasons.push(format!("node {} is not a member yet", s.node)),
    }
    let down: Vec<String> = s
        .members
        .iter()
        .filter(|m| m.id != s.node && m.membership.as_deref() != Some("removed"))
        .filter(|m| m.down || !m.up)
        .map(|m| m.id.to_string())
        .collect();
    // Every key has N replicas; with this node and the down ones gone, a key they share keeps
    // N - (down + 1), which must still reach the larger quorum.
    let quorum = usize::from(s.r.max(s.w));
    let spare = usize::from(s.n).saturating_sub(quorum);
    if down.len() + 1 > spare {
        reasons.push(format!(
            "node(s) {} down: with node {} stopped too, keys on both would have {} of N={} replicas up, below the quorum of {quorum}; bring them back first",
            down.join(", "),
            s.node,
            usize::from(s.n).saturating_sub(down.len() + 1),
            s.n
        ));
    }
    let moving = s.transfers.iter().filter(|t| !t.done).count();
    if moving > 0 {
        reasons.push(format!(
            "{moving} partition transfer(s) in progress: wait until `dynakv status` shows none"
        ));
    }
    let hints: u64 = s.hints_pending.values().sum();
    if hints > 0 {
        notes.push(format!(
            "node {} holds {hints} hint(s) for nodes that were down; they are on its disk and go out after it restarts",
            s.node
        ));
    }
    if let Some(why) = &s.storage_failure {
        notes.push(format!(
            "its storage failed ({why}): it serves nothing anyway"
        ));
    }
    (reasons, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynakv_client::NodeId;
    use dynakv_proto::wire::MemberStatus;

    fn report(down: &[u32], n: u8, w: u8) -> StatusReport {
        let members = (1..=5)
            .map(|i| MemberStatus {
                id: NodeId(i),
                addr: ([127, 0, 0, 1], 7100 + i as u16).into(),
                up: !down.contains(&i),
                down: down.contains(&i),
                membership: Some("valid".into()),
                partitions: 1,
            })
            .collect();
        StatusReport {
            node: NodeId(1),
            members,
            partition_count: 64,
            n,
            r: w,
            w,
            pending_ops: 0,
            hints_pending: Default::default(),
            transfers: Vec::new(),
            down: Vec::new(),
            stats: Default::default(),
            storage_failure: None,
            admission: Default::default(),
        }
    }

    #[test]
    fn a_node_is_safe_to_stop_only_while_its_quorums_survive() {
        assert!(verdict(&report(&[], 3, 2)).0.is_empty(), "all up");
        let (reasons, _) = verdict(&report(&[3], 3, 2));
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("node(s) 3 down"), "{reasons:?}");
        // N=5, W=2: three replicas of five may be missing.
        assert!(verdict(&report(&[3, 4], 5, 2)).0.is_empty());
        assert!(!verdict(&report(&[2, 3, 4], 5, 2)).0.is_empty());
        // N=3, W=3: no node may stop without failing writes.
        assert!(!verdict(&report(&[], 3, 3)).0.is_empty());
        let mut joining = report(&[], 3, 2);
        joining.members[0].membership = Some("leaving".into());
        assert!(verdict(&joining).0[0].contains("leaving"));
    }
}
