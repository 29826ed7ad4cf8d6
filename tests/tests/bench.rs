//! `dynakv bench` through real processes: a YCSB workload with its load phase, reported as JSON
//! with HDR percentiles per operation; the load phase really wrote the keys; workload E and
//! conflicting flags are refused with a clear error.

use dynakv_tests::{Cluster, Setup};

#[test]
fn ycsb_workload_f_loads_then_reports_per_operation_latencies_as_json() -> anyhow::Result<()> {
    let c = Cluster::start_with(&Setup::nodes(3))?;
    let report = c.cli_json(&[
        "bench",
        "--workload",
        "f",
        "--load",
        "--keys",
        "200",
        "--value-size",
        "16",
        "--duration",
        "2",
        "--concurrency",
        "8",
        "--json",
    ])?;
    assert_eq!(report["workload"], "f", "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    let ok = report["ok"].as_u64().unwrap_or(0);
    let latency = &report["latency"];
    let count = |op: &str| latency[op]["count"].as_u64().unwrap_or(0);
    assert!(
        count("read") > 0 && count("read_modify_write") > 0,
        "{report}"
    );
    assert_eq!(
        count("update") + count("insert"),
        0,
        "F has no blind updates: {report}"
    );
    assert_eq!(
        count("all"),
        ok,
        "every answered request is timed once: {report}"
    );
    for op in ["read", "read_modify_write"] {
        let (p50, p99, max) = (
            latency[op]["p50_ms"].as_f64().unwrap_or(-1.0),
            latency[op]["p99_ms"].as_f64().unwrap_or(-1.0),
            latency[op]["max_ms"].as_f64().unwrap_or(-1.0),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{op}: {report}");
    }
    // The load phase wrote every key (a value of --value-size bytes).
    let got = c.cli_json(&["get", "bench-199"])?;
    assert_eq!(got["siblings"][0], "x".repeat(16), "{got}");

    let e = c.cli(&["bench", "--workload", "e", "--duration", "1"])?;
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("range scans"));
    let both = c.cli(&["bench", "--workload", "a", "--read-ratio", "0.3"])?;
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
    Ok(())
}
