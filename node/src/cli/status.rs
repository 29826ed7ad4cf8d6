//! `dynakv status`: one node's view of the cluster, as a readable listing (one item per line) or
//! as one JSON object (`--json`, the [`StatusReport`] as it comes off the wire).

use dynakv_proto::wire::{StatusReport, TransferDirection};
use dynakv_proto::CoreStats;

use super::StatusArgs;

/// `dynakv status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let reply = client.status().await;
    client.close().await;
    let report = reply?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// The human-readable listing: a header, the member table, then one line per hint target,
/// transfer and counter.
fn render(s: &StatusReport) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "node {} sees {} members; partitions Q={}, defaults N={} R={} W={}; {} ops in flight",
        s.node,
        s.members.len(),
        s.partition_count,
        s.n,
        s.r,
        s.w,
        s.pending_ops
    ));
    if let Some(reason) = &s.storage_failure {
        line(format!(
            "STORAGE FAILED: {reason}\n  this node serves nothing until its disk is fixed and it is restarted"
        ));
    }
    let a = &s.admission;
    if a.max_inflight_requests > 0 {
        line(format!(
            "admission: {} of {} requests in flight (at most {} per connection); shed {} requests (overloaded), refused {} connections",
            a.requests_in_flight,
            a.max_inflight_requests,
            a.max_requests_per_connection,
            a.requests_shed,
            a.connections_refused
        ));
    }
    line(String::new());
    line(format!(
        "  {:>4}  {:<22} {:<10} {:<10} {:>10}",
        "id", "address", "connection", "membership", "partitions"
    ));
    let pending = s.transfers.iter().filter(|t| !t.done).count();
    for m in &s.members {
        let conn = match (m.up, m.down) {
            (_, true) => "down",
            (true, false) => "up",
            (false, false) => "no link",
        };
        let me = if m.id == s.node { "  (this node)" } else { "" };
        line(format!(
            "  {:>4}  {:<22} {:<10} {:<10} {:>10}{me}",
            m.id.0,
            m.addr.to_string(),
            conn,
            m.membership.as_deref().unwrap_or("-"),
            m.partitions
        ));
    }
    line(String::new());
    if s.down.is_empty() {
        line("down (local view): none".into());
    } else {
        let ids: Vec<String> = s.down.iter().map(ToString::to_string).collect();
        line(format!("down (local view): {}", ids.join(", ")));
    }
    if s.hints_pending.is_empty() {
        line("hints pending: none".into());
    } else {
        line("hints pending:".into());
        for (target, count) in &s.hints_pending {
            line(format!("  for node {target}: {count}"));
        }
    }
    if s.transfers.is_empty() {
        line("transfers: none".into());
    } else {
        line(format!(
            "transfers ({pending} in progress, {} done):",
            s.transfers.len() - pending
        ));
        for t in &s.transfers {
            let (arrow, verb) = match t.direction {
                TransferDirection::Outgoing => ("to", "sent"),
                TransferDirection::Incoming => ("from", "received"),
            };
            let total = t.total.map(|n| format!(" of {n}")).unwrap_or_default();
            let resent = match t.resent {
                Some(n) if n > 0 => format!(", {n} resent"),
                _ => String::new(),
            };
            let state = if t.done { "done" } else { "running" };
            line(format!(
                "  partition {} {arrow} node {}: {} keys {verb}{total}{resent} ({state})",
                t.partition, t.peer, t.keys
            ));
        }
    }
    line("counters:".into());
    for (name, value) in counters(&s.stats) {
        line(format!("  {name:<24} {value}"));
    }
    out
}

/// Every counter with its JSON name, in a stable order (through serde, so a new counter in
/// the core shows up here without a change).
fn counters(stats: &CoreStats) -> Vec<(String, u64)> {
    match serde_json::to_value(stats) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_u64().map(|v| (k, v)))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynakv_proto::wire::{MemberStatus, TransferStatus};
    use dynakv_ring::{NodeId, PartitionId};

    #[test]
    fn listing_shows_hints_transfers_down_and_counters() {
        let report = StatusReport {
            node: NodeId(1),
            members: vec![MemberStatus {
                id: NodeId(2),
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7102)),
                up: false,
                down: true,
                membership: Some("valid".into()),
                partitions: 12,
            }],
            partition_count: 64,
            n: 3,
            r: 2,
            w: 2,
            pending_ops: 0,
            hints_pending: [(NodeId(2), 7)].into_iter().collect(),
            transfers: vec![TransferStatus {
                direction: TransferDirection::Outgoing,
                partition: PartitionId(5),
                peer: NodeId(3),
                keys: 10,
                total: Some(20),
                resent: Some(4),
                done: false,
            }],
            down: vec![NodeId(2)],
            stats: CoreStats {
                hints_delivered: 4,
                ..CoreStats::default()
            },
            storage_failure: Some("fsync failed: EIO".into()),
            admission: dynakv_client::AdmissionStats {
                requests_in_flight: 3,
                max_inflight_requests: 4096,
                max_requests_per_connection: 128,
                requests_shed: 17,
                connections_refused: 2,
            },
        };
        let text = render(&report);
        assert!(text.contains("STORAGE FAILED: fsync failed: EIO"), "{text}");
        assert!(
            text.contains("admission: 3 of 4096 requests in flight (at most 128 per connection); shed 17 requests (overloaded), refused 2 connections"),
            "{text}"
        );
        assert!(
            text.contains("127.0.0.1:7102         down       valid"),
            "{text}"
        );
        assert!(text.contains("down (local view): 2"), "{text}");
        assert!(text.contains("  for node 2: 7"), "{text}");
        assert!(
            text.contains("partition 5 to node 3: 10 keys sent of 20, 4 resent (running)"),
            "{text}"
        );
        assert!(text.contains("hints_delivered          4"), "{text}");
        assert!(text.contains("tombstones_reaped"), "{text}");
    }
}
