//! End-to-end tests of the TLS and framing layer over real QUIC on 127.0.0.1.

use std::future::IntoFuture;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dynakv_ring::NodeId;
use dynakv_transport::Error;
use dynakv_transport::{
    client_config, client_config_with_alpn, client_endpoint, connect, is_version_mismatch,
    node_client_config, peer_identity, peer_node_id, read_frame, server_config, server_endpoint,
    write_frame, ClusterCa, Identity, NodeCert, Role, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};

const WAIT: Duration = Duration::from_secs(10);

fn localhost() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

async fn bounded<F: IntoFuture>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A server endpoint for `node` (trusting `ca`) on an ephemeral loopback port.
fn server(ca: &ClusterCa, node: &NodeCert) -> (quinn::Endpoint, SocketAddr) {
    let cfg = server_config(&ca.cert_pem(), node).expect("server config");
    let endpoint = server_endpoint(localhost(), cfg).expect("bind server");
    let addr = endpoint.local_addr().expect("server addr");
    (endpoint, addr)
}

/// Accepts one connection; `Err` if the handshake fails on the server side.
async fn accept_one(
    endpoint: &quinn::Endpoint,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let incoming = bounded("an incoming connection", endpoint.accept())
        .await
        .expect("endpoint closed");
    bounded("the server-side handshake", incoming).await
}

/// Server half of the echo exchange: reads one frame on the first bidi stream and echoes it.
async fn echo_one(conn: &quinn::Connection) {
    let (mut send, mut recv) = bounded("a stream", conn.accept_bi())
        .await
        .expect("accept_bi");
    let frame = bounded("a frame", read_frame(&mut recv, DEFAULT_MAX_FRAME))
        .await
        .expect("read")
        .expect("one frame");
    write_frame(&mut send, &frame).await.expect("echo");
    send.finish().expect("finish");
    let _ = bounded("the stream to be acknowledged", send.stopped()).await;
}

/// Client half: sends one frame on a new bidi stream and returns the echoed frame.
async fn exchange(conn: &quinn::Connection, payload: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open_bi");
    write_frame(&mut send, payload).await.expect("write");
    send.finish().expect("finish");
    let echoed = bounded("the echo", read_frame(&mut recv, DEFAULT_MAX_FRAME))
        .await
        .expect("read echo")
        .expect("an echo frame");
    let end = bounded("end of stream", read_frame(&mut recv, DEFAULT_MAX_FRAME)).await;
    assert!(matches!(end, Ok(None)), "clean end of stream, got {end:?}");
    echoed
}

#[tokio::test]
async fn nodes_authenticate_each_other_and_exchange_frames() {
    let ca = ClusterCa::generate().expect("ca");
    let (server_ep, addr) = server(&ca, &ca.issue_node(NodeId(1)).expect("node 1"));
    let client_cfg = node_client_config(&ca.cert_pem(), &ca.issue_node(NodeId(2)).expect("node 2"))
        .expect("client config");
    let client_ep = client_endpoint(localhost(), client_cfg).expect("bind client");

    // Twice: the second connection may resume the TLS session and must keep the identity.
    for round in 0..2u8 {
        let payload = vec![round; 1000];
        let server_task = {
            let server_ep = server_ep.clone();
            tokio::spawn(async move {
                let conn = accept_one(&server_ep).await.expect("server handshake");
                let peer = peer_node_id(&conn);
                echo_one(&conn).await;
                peer
            })
        };
        let conn = bounded("the client handshake", connect(&client_ep, addr))
            .await
            .expect("connect");
        assert_eq!(
            peer_node_id(&conn),
            Some(NodeId(1)),
            "client sees the server node"
        );
        assert_eq!(exchange(&conn, &payload).await, payload);
        let server_saw = bounded("the server task", server_task)
            .await
            .expect("server task");
        assert_eq!(server_saw, Some(NodeId(2)), "round {round}");
        conn.close(0u32.into(), b"done");
    }
    client_ep.wait_idle().await;
}

#[tokio::test]
async fn a_client_certificate_names_the_client_and_its_role_and_no_node() {
    let ca = ClusterCa::generate().expect("ca");
    let (server_ep, addr) = server(&ca, &ca.issue_node(NodeId(1)).expect("node 1"));
    let cert = ca.issue_client("reader", Role::Read).expect("client cert");
    let client_ep = client_endpoint(
        localhost(),
        client_config(&ca.cert_pem(), Some(&cert)).expect("cfg"),
    )
    .expect("bind");
    let server_task = tokio::spawn(async move {
        let conn = accept_one(&server_ep).await.expect("server handshake");
        let seen = (peer_node_id(&conn), peer_identity(&conn));
        echo_one(&conn).await;
        seen
    });
    let conn = bounded("the client handshake", connect(&client_ep, addr))
        .await
        .expect("connect");
    assert_eq!(exchange(&conn, b"hi").await, b"hi");
    let (node, who) = bounded("the server task", server_task).await.expect("task");
    assert_eq!(node, None);
    assert_eq!(
        who,
        Some(Identity::Client {
            name: "reader".into(),
            role: Role::Read
        })
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_and_told_what_to_do() {
    let ca = ClusterCa::generate().expect("ca");
    let (server_ep, addr) = server(&ca, &ca.issue_node(NodeId(1)).expect("node 1"));
    let client_ep = client_endpoint(
        localhost(),
        client_config(&ca.cert_pem(), None).expect("cfg"),
    )
    .expect("bind");
    let server_task = tokio::spawn(async move { accept_one(&server_ep).await.is_ok() });
    // With TLS 1.3 the client may finish its half of the handshake before the server refuses;
    // the refusal then shows on the first request.
    let error = match bounded("the client handshake", connect(&client_ep, addr)).await {
        Err(e) => e,
        Ok(conn) => {
            let frame = dynakv_proto::wire::ClientFrame::Status;
            bounded(
                "the refused call",
                dynakv_transport::call(&conn, &frame, WAIT),
            )
            .await
            .expect_err("the server must refuse a client without a certificate")
        }
    };
    assert!(
        matches!(&error, Error::CertificateRefused(m) if m.contains("requires a client certificate") && m.contains("dynakv ca issue-client")),
        "got {error}"
    );
    assert!(!bounded("the server task", server_task).await.expect("task"));
}

#[tokio::test]
async fn another_protocol_version_is_refused_at_the_handshake_on_both_sides() {
    let ca = ClusterCa::generate().expect("ca");
    let (server_ep, addr) = server(&ca, &ca.issue_node(NodeId(1)).expect("node 1"));
    let old = client_config_with_alpn(&ca.cert_pem(), None, b"dynakv/1").expect("cfg");
    let client_ep = client_endpoint(localhost(), old).expect("bind");
    let server_task = tokio::spawn(async move { accept_one(&server_ep).await.map(|_| ()) });
    let result = bounded("the client handshake", connect(&client_ep, addr)).await;
    match result {
        Err(e @ Error::VersionMismatch { ours, .. }) => {
            assert_eq!(ours, PROTOCOL_VERSION);
            assert!(e.to_string().contains("protocol version"), "{e}");
        }
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    let server_side = bounded("the server task", server_task).await.expect("task");
    match server_side {
        Err(e) => assert!(is_version_mismatch(&e), "server saw {e:?}"),
        Ok(()) => panic!("the server must refuse a client of another version"),
    }
}

#[tokio::test]
async fn client_refuses_a_server_from_another_cluster() {
    let ca = ClusterCa::generate().expect("ca");
    let other = ClusterCa::generate().expect("other ca");
    let (server_ep, addr) = server(&other, &other.issue_node(NodeId(1)).expect("rogue node"));
    let client_cfg = node_client_config(&ca.cert_pem(), &ca.issue_node(NodeId(2)).expect("node 2"))
        .expect("cfg");
    let client_ep = client_endpoint(localhost(), client_cfg).expect("bind");
    let server_task = tokio::spawn(async move { accept_one(&server_ep).await.map(|_| ()) });
    let result = bounded("the client handshake", connect(&client_ep, addr)).await;
    assert!(matches!(result, Err(Error::Transport(_))), "got {result:?}");
    let server_side = bounded("the server task", server_task).await.expect("task");
    assert!(server_side.is_err(), "server handshake must fail too");
}

#[tokio::test]
async fn server_refuses_a_client_cert_from_another_cluster() {
    let ca = ClusterCa::generate().expect("ca");
    let other = ClusterCa::generate().expect("other ca");
    let (server_ep, addr) = server(&ca, &ca.issue_node(NodeId(1)).expect("node 1"));
    // The rogue client trusts the real CA (so it accepts the server) but presents a
    // certificate from another CA.
    let rogue = other.issue_node(NodeId(2)).expect("rogue cert");
    let client_ep = client_endpoint(
        localhost(),
        node_client_config(&ca.cert_pem(), &rogue).expect("cfg"),
    )
    .expect("bind");
    let server_task = tokio::spawn(async move { accept_one(&server_ep).await.map(|_| ()) });
    // In TLS 1.3 the client may finish its side of the handshake before the server checks its
    // certificate; then the handshake "succeeds" for the client and the server closes the
    // connection right after.
    match bounded("the client handshake", connect(&client_ep, addr)).await {
        Err(_) => {}
        Ok(conn) => {
            let reason = bounded("the connection to close", conn.closed()).await;
            assert!(
                !matches!(reason, quinn::ConnectionError::LocallyClosed),
                "closed by the server, got {reason:?}"
            );
            assert_eq!(peer_node_id(&conn), Some(NodeId(1)));
        }
    }
    let server_side = bounded("the server task", server_task).await.expect("task");
    assert!(
        server_side.is_err(),
        "server must refuse the rogue certificate"
    );
}

#[tokio::test]
async fn oversized_and_garbage_frames_are_rejected_without_panicking() {
    let ca = ClusterCa::generate().expect("ca");
    let (server_ep, addr) = server(&ca, &ca.issue_node(NodeId(1)).expect("node 1"));
    let cert = ca.issue_client("fuzzer", Role::Write).expect("client cert");
    let client_ep = client_endpoint(
        localhost(),
        client_config(&ca.cert_pem(), Some(&cert)).expect("cfg"),
    )
    .expect("bind");
    let server_task = tokio::spawn(async move {
        let conn = accept_one(&server_ep).await.expect("server handshake");
        // Stream 1: announces 4 GiB - 1 and sends three payload bytes, keeping the stream open.
        // read_frame must fail from the header alone (it would hang if it waited for the
        // payload) and leave the payload bytes unread.
        let (_send, mut recv) = bounded("stream 1", conn.accept_bi()).await.expect("bi");
        let result = bounded(
            "the oversized frame",
            read_frame(&mut recv, DEFAULT_MAX_FRAME),
        )
        .await;
        assert!(
            matches!(result, Err(Error::FrameTooLarge { len, limit })
                if len == u64::from(u32::MAX) && limit == DEFAULT_MAX_FRAME as u64),
            "got {result:?}"
        );
        let mut rest = [0u8; 3];
        bounded("the unread payload", recv.read_exact(&mut rest))
            .await
            .expect("payload still there");
        assert_eq!(&rest, b"abc");

        // Stream 2: a header cut short by the end of the stream.
        let (_send, mut recv) = bounded("stream 2", conn.accept_bi()).await.expect("bi");
        let result = bounded("the truncated header", read_frame(&mut recv, 64)).await;
        assert!(matches!(result, Err(Error::Malformed(_))), "got {result:?}");

        // Stream 3: a payload cut short by the end of the stream.
        let (_send, mut recv) = bounded("stream 3", conn.accept_bi()).await.expect("bi");
        let result = bounded("the truncated payload", read_frame(&mut recv, 64)).await;
        assert!(matches!(result, Err(Error::Malformed(_))), "got {result:?}");

        // Streams 4..: pseudo-random garbage; any outcome but a panic or a hang is fine.
        for _ in 0..8 {
            let (_send, mut recv) = bounded("a garbage stream", conn.accept_bi())
                .await
                .expect("bi");
            while let Ok(Some(frame)) = bounded("garbage", read_frame(&mut recv, 64)).await {
                assert!(frame.len() <= 64);
            }
        }
    });

    let conn = bounded("the client handshake", connect(&client_ep, addr))
        .await
        .expect("connect");
    let mut oversized = u32::MAX.to_be_bytes().to_vec();
    oversized.extend_from_slice(b"abc");
    let (mut send1, _recv1) = conn.open_bi().await.expect("open");
    send1.write_all(&oversized).await.expect("write");
    let mut streams: Vec<Vec<u8>> = vec![vec![0, 0], {
        let mut v = 10u32.to_be_bytes().to_vec();
        v.extend_from_slice(b"abc");
        v
    }];
    // A small xorshift generator: deterministic garbage without an RNG dependency.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..8usize {
        let garbage: Vec<u8> = (0..(i * 37 + 1))
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        streams.push(garbage);
    }
    let mut keep = Vec::new();
    for bytes in streams {
        let (mut send, recv) = conn.open_bi().await.expect("open");
        send.write_all(&bytes).await.expect("write");
        send.finish().expect("finish");
        keep.push((send, recv));
    }
    bounded("the server checks", server_task)
        .await
        .expect("server task panicked");
    drop(send1);
}

#[test]
fn ca_and_node_certs_survive_save_and_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate().expect("ca");
    ca.save(dir.path()).expect("save ca");
    let loaded = ClusterCa::load(dir.path()).expect("load ca");
    assert_eq!(loaded.cert_pem(), ca.cert_pem());

    // A node issued by the loaded CA is trusted under the original CA certificate.
    let node = loaded.issue_node(NodeId(7)).expect("issue");
    node.save(dir.path()).expect("save node");
    let node = NodeCert::load(dir.path(), false).expect("load node");
    assert_eq!(node.node_id(), Some(NodeId(7)));
    server_config(&ca.cert_pem(), &node).expect("server config from loaded cert");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for key in ["ca-key.pem", "node-key.pem"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        // A key other users can read is refused (naming the fix) unless allowed explicitly.
        let key = dir.path().join("node-key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = NodeCert::load(dir.path(), false).expect_err("open key");
        assert!(
            err.to_string().contains("chmod 600") && err.to_string().contains("node-key.pem"),
            "{err}"
        );
        NodeCert::load(dir.path(), true).expect("allowed explicitly");
    }
}

#[tokio::test]
async fn loaded_ca_issues_certs_that_chain_to_the_saved_cert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate().expect("ca");
    ca.save(dir.path()).expect("save");
    let loaded = ClusterCa::load(dir.path()).expect("load");
    // Server trusts the ORIGINAL ca.pem; the client's cert comes from the LOADED CA.
    let (server_ep, addr) = server(&ca, &ca.issue_node(NodeId(1)).expect("node 1"));
    let client_cfg = node_client_config(
        &ca.cert_pem(),
        &loaded.issue_node(NodeId(3)).expect("node 3"),
    )
    .expect("cfg");
    let client_ep = client_endpoint(localhost(), client_cfg).expect("bind");
    let server_task = tokio::spawn(async move {
        let conn = accept_one(&server_ep).await.expect("server handshake");
        peer_node_id(&conn)
    });
    let _conn = bounded("the handshake", connect(&client_ep, addr))
        .await
        .expect("connect");
    let seen = bounded("the server task", server_task).await.expect("task");
    assert_eq!(seen, Some(NodeId(3)));
}

#[test]
fn loading_from_a_bad_dir_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = ClusterCa::load(dir.path()).expect_err("empty dir");
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("missing") && m.contains("ca.pem")),
        "{err}"
    );
    let err = NodeCert::load(dir.path(), false).expect_err("empty dir");
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("node.pem")),
        "{err}"
    );

    // Corrupt key next to a valid certificate.
    let ca = ClusterCa::generate().expect("ca");
    ca.save(dir.path()).expect("save");
    std::fs::write(dir.path().join("ca-key.pem"), "garbage").expect("overwrite key");
    let err = ClusterCa::load(dir.path()).expect_err("corrupt key");
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("ca-key.pem")),
        "{err}"
    );

    // A key from another CA does not match the certificate.
    let other = tempfile::tempdir().expect("tempdir");
    ClusterCa::generate()
        .expect("other")
        .save(other.path())
        .expect("save other");
    std::fs::copy(
        other.path().join("ca-key.pem"),
        dir.path().join("ca-key.pem"),
    )
    .expect("copy");
    let err = ClusterCa::load(dir.path()).expect_err("mismatched key");
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("does not match")),
        "{err}"
    );

    // A certificate file with no certificate in it.
    std::fs::write(dir.path().join("ca.pem"), "not pem").expect("overwrite cert");
    let err = ClusterCa::load(dir.path()).expect_err("corrupt cert");
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("ca.pem")),
        "{err}"
    );
}
