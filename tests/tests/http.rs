//! Issue 13, part 1, on real processes: the HTTPS/JSON API, driven by an HTTP client (hyper over
//! rustls) with the cluster's client certificates.

use std::path::PathBuf;

use dynakv_tests::https::{https_request, HttpsReply};
use dynakv_tests::{Cluster, Setup};

const CONTEXT: &str = "x-dynakv-context";

/// A client of one node's API with one certificate (or none).
struct Api {
    addr: std::net::SocketAddr,
    ca: PathBuf,
    cert: Option<(PathBuf, PathBuf)>,
}

impl Api {
    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<HttpsReply> {
        let cert = self.cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        https_request(self.addr, &self.ca, cert, method, path, headers, body)
    }

    fn get(&self, path: &str) -> anyhow::Result<HttpsReply> {
        self.call("GET", path, &[], b"")
    }

    fn put(&self, path: &str, value: &[u8], context: Option<&str>) -> anyhow::Result<HttpsReply> {
        let headers: Vec<(&str, &str)> = context.iter().map(|c| (CONTEXT, *c)).collect();
        self.call("PUT", path, &headers, value)
    }
}

fn siblings(reply: &HttpsReply) -> anyhow::Result<Vec<String>> {
    let mut values: Vec<String> = reply.json()?["siblings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    values.sort();
    Ok(values)
}

#[test]
fn the_http_api_reads_writes_and_shows_siblings_as_300() -> anyhow::Result<()> {
    let setup = Setup {
        http: true,
        node_config: Some("max_value_bytes = 4096\n".into()),
        ..Setup::nodes(3)
    };
    let c = Cluster::start_with(&setup)?;
    let http = |id: u32| c.nodes[id as usize - 1].http.expect("http address");
    let (cert, key) = c.admin_cert();
    let api = Api {
        addr: http(1),
        ca: c.ca_path().to_path_buf(),
        cert: Some((cert, key)),
    };

    // A key nobody wrote: 404, still with a context.
    let missing = api.get("/v1/kv/fruit")?;
    assert_eq!(missing.status, 404);
    assert_eq!(siblings(&missing)?, Vec::<String>::new());
    assert!(missing.header(CONTEXT).is_some());

    // A put, then a read: one value, 200; the header carries the body's context.
    let put = api.put("/v1/kv/fruit", b"apple", None)?;
    assert_eq!(put.status, 200, "{:?}", put.json()?);
    assert!(put.json()?["acks"].as_u64() >= Some(2));
    let one = api.get("/v1/kv/fruit")?;
    assert_eq!(
        (one.status, siblings(&one)?),
        (200, vec!["apple".to_string()])
    );
    assert_eq!(
        one.header(CONTEXT).as_deref(),
        one.json()?["context"].as_str()
    );

    // A blind write through another node is concurrent: two siblings, 300 Multiple Choices.
    let other = Api {
        addr: http(2),
        ca: api.ca.clone(),
        cert: api.cert.clone(),
    };
    assert_eq!(other.put("/v1/kv/fruit", b"pear", None)?.status, 200);
    let both = api.get("/v1/kv/fruit?r=3")?;
    assert_eq!(both.status, 300);
    assert_eq!(siblings(&both)?, vec!["apple", "pear"]);

    // Writing back with the read's context merges them: one value again.
    let context = both.header(CONTEXT).expect("context header");
    assert_eq!(
        api.put("/v1/kv/fruit", b"apple+pear", Some(&context))?
            .status,
        200
    );
    let merged = api.get("/v1/kv/fruit?r=3")?;
    assert_eq!(
        (merged.status, siblings(&merged)?),
        (200, vec!["apple+pear".to_string()])
    );

    // The CLI reads the same key and prints the same JSON shape.
    let cli = c.cli_json(&["get", "fruit", "--r", "3"])?;
    assert_eq!(cli["siblings"], merged.json()?["siblings"]);
    assert_eq!(cli["key"], "fruit");

    // Keys are percent-decoded; values that are not UTF-8 come back in base64.
    assert_eq!(api.put("/v1/kv/a%2Fb", b"\xff\x00", None)?.status, 200);
    let binary = api.get("/v1/kv/a%2Fb")?;
    assert_eq!(binary.json()?["encoding"], "base64");
    assert_eq!(binary.json()?["siblings"][0], "/wA=");
    assert_eq!(c.cli_json(&["get", "a/b"])?["siblings"][0], "/wA=");

    // A delete with the context: the key reads as missing.
    let ctx = merged.header(CONTEXT).expect("context header");
    let deleted = api.call("DELETE", "/v1/kv/fruit", &[(CONTEXT, &ctx)], b"")?;
    assert_eq!(deleted.status, 200);
    assert_eq!(api.get("/v1/kv/fruit?r=3")?.status, 404);

    // Bad input: a clear 4xx with a JSON error, and the node keeps serving.
    let bad_w = api.put("/v1/kv/k?w=9", b"v", None)?;
    assert_eq!(bad_w.status, 400);
    assert!(bad_w.json()?["error"]
        .as_str()
        .is_some_and(|m| m.contains('w')));
    assert_eq!(api.put("/v1/kv/k?x=1", b"v", None)?.status, 400);
    assert_eq!(
        api.put("/v1/kv/k", b"v", Some("garbage"))?.status,
        400,
        "a malformed context"
    );
    let big = api.put("/v1/kv/k", &[b'x'; 5000], None)?;
    assert_eq!(big.status, 413, "{:?}", big.json()?);
    assert_eq!(api.get("/v1/kv/")?.status, 400);
    assert_eq!(api.call("POST", "/v1/kv/k", &[], b"")?.status, 405);
    assert_eq!(api.get("/v1/nothing")?.status, 404);
    assert_eq!(api.get("/v1/kv/fruit")?.status, 404, "still serving");
    Ok(())
}

#[test]
fn the_http_api_checks_certificates_and_roles_and_reports_quorum_failures() -> anyhow::Result<()> {
    let setup = Setup {
        http: true,
        ..Setup::nodes(3)
    };
    let mut c = Cluster::start_with(&setup)?;
    let addr = c.nodes[0].http.expect("http address");
    let ca = c.ca_path().to_path_buf();
    let reader = c.issue_client("dashboard", "read")?;
    let admin = c.admin_cert();
    let as_reader = Api {
        addr,
        ca: ca.clone(),
        cert: Some(reader),
    };
    let anonymous = Api {
        addr,
        ca: ca.clone(),
        cert: None,
    };
    let api = Api {
        addr,
        ca,
        cert: Some(admin),
    };

    // No certificate: 401; the read role may read but not write: 403, saying which role.
    let unauthenticated = anonymous.get("/v1/kv/k")?;
    assert_eq!(unauthenticated.status, 401);
    assert!(unauthenticated.json()?["error"]
        .as_str()
        .is_some_and(|m| m.contains("certificate")));
    assert_eq!(as_reader.get("/v1/kv/k")?.status, 404);
    let forbidden = as_reader.put("/v1/kv/k", b"v", None)?;
    assert_eq!(forbidden.status, 403);
    assert!(forbidden.json()?["error"]
        .as_str()
        .is_some_and(|m| m.contains("write")));
    assert_eq!(api.get("/v1/kv/k")?.status, 404, "nothing was written");

    // Two of three nodes down: a W=3 write cannot reach its quorum: 503, with the counts.
    c.stop(2)?;
    c.stop(3)?;
    let failed = api.put("/v1/kv/k?w=3&timeout=1000", b"v", None)?;
    assert_eq!(failed.status, 503, "{:?}", failed.json()?);
    let body = failed.json()?;
    assert_eq!(body["needed"], 3, "{body}");
    assert!(
        body["answered"].as_u64().is_some() || body["available"].as_u64().is_some(),
        "{body}"
    );
    Ok(())
}
