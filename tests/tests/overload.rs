//! Load far above what a node accepts, through real processes: an open-loop `dynakv bench
//! --rate` against nodes with a small in-flight limit gets "overloaded" answers for what they
//! shed and real answers for what they took; the nodes count both and keep serving. A client
//! address over its connection limit is closed at once.

use dynakv_client::{Client, ClientError};
use dynakv_tests::{Cluster, Setup};

#[test]
fn an_open_loop_flood_is_shed_with_overloaded_errors_and_the_node_keeps_serving(
) -> anyhow::Result<()> {
    let setup = Setup {
        node_config: Some(
            "max_inflight_requests = 4\nmax_requests_per_connection = 3\nmax_client_connections_per_ip = 3\n"
                .into(),
        ),
        ..Setup::nodes(3)
    };
    let c = Cluster::start_with(&setup)?;
    let out = c.cli(&[
        "bench",
        "--rate",
        "4000",
        "--duration",
        "2",
        "--keys",
        "100",
    ])?;
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{summary} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "<ok> ok, <overloaded> overloaded, <failed> failed, <skipped> not sent in ..."
    let count = |what: &str| -> u64 {
        summary
            .split(", ")
            .find_map(|part| {
                part.strip_suffix(what)
                    .or_else(|| part.split_once(&format!(" {what}")).map(|(n, _)| n))
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let ok = count("ok");
    assert!(ok > 0, "the nodes served what they accepted: {summary}");
    assert!(
        count("overloaded") > 0,
        "the nodes shed the excess: {summary}"
    );
    // Each node counted what it shed, and still answers.
    let mut shed = 0;
    for id in 1..=3 {
        let status = c.status(id)?;
        shed += status["admission"]["requests_shed"].as_u64().unwrap_or(0);
        assert_eq!(
            status["admission"]["max_inflight_requests"].as_u64(),
            Some(4)
        );
        assert_eq!(
            status["admission"]["max_requests_per_connection"].as_u64(),
            Some(3)
        );
    }
    assert!(shed > 0);
    let put = c.cli_json(&["put", "after-the-flood", "v"])?;
    assert_eq!(put["acks"].as_u64(), Some(2), "{put}");

    // Connections per client address: the fourth from 127.0.0.1 is closed at once.
    let rt = tokio::runtime::Runtime::new()?;
    let creds = c.creds()?;
    rt.block_on(async {
        let mut open = Vec::new();
        // The CLI above is gone; status calls close their connections. Three may stay open.
        for _ in 0..3 {
            let client = Client::direct(c.addr(1), &creds)?;
            client.cluster_info().await?;
            open.push(client);
        }
        let extra = Client::direct(c.addr(1), &creds)?;
        let refused = extra.cluster_info().await;
        match refused {
            Err(ClientError::Unreachable(m)) => {
                assert!(m.contains("too many connections"), "{m}")
            }
            other => panic!("a fourth connection must be refused, got {other:?}"),
        }
        for client in open {
            client.close().await;
        }
        anyhow::Ok(())
    })?;
    let status = c.status(1)?;
    assert!(
        status["admission"]["connections_refused"].as_u64() >= Some(1),
        "{status}"
    );
    Ok(())
}
