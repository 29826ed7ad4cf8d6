//! Request timeouts end to end: the cluster's `request_timeout_ms` (cluster.toml) is the one
//! deadline of a request that sets none, in the core and on the node's accept path alike.

use dynakv_tests::{Cluster, Setup};

/// A cluster whose default timeout (9 s) is longer than the built-in one (5 s): a quorum that
/// cannot be reached must fail with the core's own timeout error after 9 s, naming how many
/// replicas answered; the accept path must not give up first with a vaguer error.
#[test]
fn the_clusters_request_timeout_governs_requests_without_their_own() -> anyhow::Result<()> {
    let setup = Setup {
        request_timeout_ms: Some(9_000),
        ..Setup::nodes(3)
    };
    let c = Cluster::start_with(&setup)?;
    let a = c.addr(1).to_string();
    c.cli_json(&["put", "k", "v", "--node", &a])?;
    // Frozen, not dead: its connection stays up, so the coordinator waits for its ack.
    c.pause(3);
    let out = c.cli(&["put", "k", "v2", "--w", "3", "--node", &a]);
    c.resume(3);
    let out = out?;
    assert!(
        !out.status.success(),
        "a W=3 put with a frozen replica must fail"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("timed out after 9000 ms") && stderr.contains("2 of 3 replicas answered"),
        "expected the core's timeout after the cluster's 9000 ms, got: {stderr}"
    );
    Ok(())
}
