//! A node's settings from its three sources, in order of precedence: command-line flags, then
//! environment variables `DYNAKV_<KEY>` (one per key of `dynakv.toml`), then the file itself
//! (`--config`), then the defaults. [`NodeFlags`] are the flags; [`load`] reads the file with the
//! environment applied; [`node_options`] merges and resolves everything into the
//! [`NodeOptions`] a node starts with (`dynakv node` and `dynakv config check` share it).
//!
//! Addresses a node dials or advertises (`advertise`, `join`) may be host names: they are
//! resolved at start, with retries, since in a container the name of a peer may appear a moment
//! after this node starts. Listen addresses are IPs (what to bind).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dynakv_ring::NodeId;

use crate::config::NodeConfigFile;
use crate::error::{Error, Result};
use crate::NodeOptions;

/// Every key of `dynakv.toml`: each can be set by the environment variable `DYNAKV_` + the key
/// in capitals (`DYNAKV_CACHE_MB=64`). Other `DYNAKV_` variables (the CLI's `DYNAKV_NODES`,
/// `DYNAKV_CA`, ...) are not settings and are left alone.
pub const KEYS: &[&str] = &[
    "id",
    "listen",
    "advertise",
    "dir",
    "join",
    "cluster",
    "metrics_addr",
    "http_addr",
    "insecure_key_permissions",
    "max_key_bytes",
    "max_value_bytes",
    "sibling_warn",
    "sibling_max",
    "read_repair",
    "peer_queue",
    "fallback_after_ms",
    "tick_ms",
    "handoff_batch",
    "handoff_backoff_max_ms",
    "aae_interval_ms",
    "scrub_per_sec",
    "read_repair_per_sec",
    "tombstone_grace_ms",
    "gossip_interval_ms",
    "max_transfers",
    "transfer_batch",
    "allow_node_clients",
    "max_inflight_requests",
    "max_requests_per_connection",
    "max_client_connections_per_ip",
    "cache_mb",
];

/// How long a host name in `advertise` or `join` may take to resolve at start.
pub const RESOLVE_WAIT: Duration = Duration::from_secs(60);

/// The environment variable of a key.
pub fn env_name(key: &str) -> String {
    format!("DYNAKV_{}", key.to_ascii_uppercase())
}

/// Reads the node config file at `path` (none: an empty one) and applies the `DYNAKV_<KEY>`
/// variables of `env` over it. A variable's value is read as a TOML value when it is one
/// (`64`, `true`) and as a string otherwise; `DYNAKV_JOIN` is a comma-separated list. Errors
/// name the file line or the variable.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<NodeConfigFile> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| Error::Config(format!("cannot read config file {}: {e}", p.display())))?,
        None => String::new(),
    };
    // The file alone first: its errors name its lines.
    let in_file = |e: Error| match path {
        Some(p) => e.in_file("config file", p),
        None => e,
    };
    NodeConfigFile::parse(&text).map_err(in_file)?;
    let mut table: toml::Table = toml::from_str(&text)
        .map_err(|e: toml::de::Error| Error::Config(e.message().to_string()))?;
    let mut applied = Vec::new();
    for (name, value) in env {
        let Some(key) = KEYS.iter().find(|k| env_name(k) == name) else {
            continue;
        };
        let parsed = if *key == "join" {
            toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            )
        } else {
            toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.clone()))
        };
        table.insert((*key).to_string(), parsed);
        applied.push(name);
    }
    toml::Value::Table(table)
        .try_into::<NodeConfigFile>()
        .map_err(|e| {
            Error::Config(format!(
                "{} (set by {})",
                e.message().trim_end(),
                if applied.is_empty() {
                    "the config file".to_string()
                } else {
                    format!("the config file and {}", applied.join(", "))
                }
            ))
        })
        .map_err(in_file)
}

/// What the command line says (every field optional: the file and the environment fill in).
#[derive(Debug, Clone, Default)]
pub struct NodeFlags {
    pub id: Option<u32>,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub dir: Option<PathBuf>,
    pub join: Vec<String>,
    pub cluster: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub insecure_key_permissions: bool,
}

/// The options a node starts with: flags over `file` (which already holds the environment),
/// host names resolved (waiting up to [`RESOLVE_WAIT`] for each). A missing id, listen address
/// or data directory is an error that says the three ways to give it.
pub async fn node_options(flags: NodeFlags, file: NodeConfigFile) -> Result<NodeOptions> {
    let missing = |what: &str, flag: &str, key: &str| {
        Error::Config(format!(
            "no {what}: pass {flag}, set `{key}` in the config file, or set {}",
            env_name(key)
        ))
    };
    let id = flags
        .id
        .or(file.id)
        .ok_or_else(|| missing("node id", "--id", "id"))?;
    let listen = match flags.listen.or(file.listen) {
        Some(a) => a,
        None => return Err(missing("listen address", "--listen", "listen")),
    };
    let dir = flags
        .dir
        .clone()
        .or_else(|| file.dir.clone())
        .ok_or_else(|| missing("data directory", "--dir", "dir"))?;
    let advertise = match flags.advertise.as_ref().or(file.advertise.as_ref()) {
        Some(name) => Some(resolve(name, RESOLVE_WAIT).await?),
        None => None,
    };
    let names = if flags.join.is_empty() {
        file.join.clone().unwrap_or_default()
    } else {
        flags.join.clone()
    };
    let mut join = Vec::new();
    for name in &names {
        join.push(resolve(name, RESOLVE_WAIT).await?);
    }
    Ok(NodeOptions {
        id: NodeId(id),
        listen,
        advertise,
        dir,
        join,
        cluster: flags.cluster.clone().or_else(|| file.cluster.clone()),
        insecure_key_permissions: flags.insecure_key_permissions
            || file.insecure_key_permissions.unwrap_or(false),
        metrics_addr: flags.metrics_addr.or(file.metrics_addr),
        http_addr: flags.http_addr.or(file.http_addr),
        settings: file,
    })
}

/// `host:port` (or `ip:port`) to one address, retrying while the name does not resolve yet.
pub async fn resolve(name: &str, wait: Duration) -> Result<SocketAddr> {
    if let Ok(addr) = name.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !name.contains(':') {
        return Err(Error::Config(format!(
            "{name:?} is not HOST:PORT or IP:PORT"
        )));
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let why = match tokio::net::lookup_host(name).await {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => return Ok(a),
                None => "no address".to_string(),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Config(format!(
                "cannot resolve {name:?} within {wait:?}: {why}"
            )));
        }
        tracing::info!(%name, %why, "host name does not resolve yet; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_key_is_a_real_setting_and_the_environment_overrides_the_file() {
        // Each listed key is accepted by the file format (deny_unknown_fields would refuse it).
        for key in KEYS {
            let value = match *key {
                "listen" | "metrics_addr" | "http_addr" => "\"127.0.0.1:1\"".to_string(),
                "advertise" | "dir" | "cluster" => "\"x\"".to_string(),
                "join" => "[\"h:1\"]".to_string(),
                "read_repair" | "allow_node_clients" | "insecure_key_permissions" => {
                    "true".to_string()
                }
                _ => "7".to_string(),
            };
            let text = format!("{key} = {value}\n");
            assert!(NodeConfigFile::parse(&text).is_ok(), "{key}: {text}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dynakv.toml");
        std::fs::write(&path, "id = 1\ncache_mb = 256\nread_repair = true\n").expect("write");
        let cfg = load(
            Some(&path),
            env(&[
                ("DYNAKV_CACHE_MB", "64"),
                ("DYNAKV_READ_REPAIR", "false"),
                ("DYNAKV_JOIN", "node1:7101, 10.0.0.2:7101"),
                ("DYNAKV_DIR", "/var/lib/dynakv"),
                ("DYNAKV_NODES", "not a setting"),
            ]),
        )
        .expect("loads");
        assert_eq!(cfg.id, Some(1));
        assert_eq!(cfg.cache_mb, Some(64));
        assert_eq!(cfg.read_repair, Some(false));
        assert_eq!(
            cfg.join,
            Some(vec!["node1:7101".to_string(), "10.0.0.2:7101".to_string()])
        );
        assert_eq!(cfg.dir, Some(PathBuf::from("/var/lib/dynakv")));
    }

    /// The reference file in deploy/ parses and documents every key.
    #[test]
    fn the_reference_dynakv_toml_is_valid_and_complete() {
        let text = include_str!("../../../deploy/dynakv.toml");
        let file = NodeConfigFile::parse(text).expect("deploy/dynakv.toml parses");
        assert_eq!(file.id, Some(1));
        for key in KEYS {
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
                "deploy/dynakv.toml does not document {key}"
            );
        }
    }

    #[test]
    fn bad_values_name_their_source() {
        let err = load(None, env(&[("DYNAKV_CACHE_MB", "lots")])).expect_err("bad");
        assert!(err.to_string().contains("DYNAKV_CACHE_MB"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dynakv.toml");
        std::fs::write(&path, "id = 1\ncache_mbs = 2\n").expect("write");
        let err = load(Some(&path), Vec::new()).expect_err("typo");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[tokio::test]
    async fn flags_win_and_missing_settings_say_how_to_give_them() {
        let file = NodeConfigFile {
            id: Some(1),
            listen: Some("127.0.0.1:7101".parse().expect("addr")),
            dir: Some(PathBuf::from("/d")),
            join: Some(vec!["localhost:7102".into()]),
            ..NodeConfigFile::default()
        };
        let flags = NodeFlags {
            id: Some(2),
            ..NodeFlags::default()
        };
        let opts = node_options(flags, file.clone()).await.expect("options");
        assert_eq!(opts.id, NodeId(2));
        assert_eq!(opts.dir, PathBuf::from("/d"));
        assert_eq!(opts.join.len(), 1, "localhost resolves");
        assert_eq!(opts.join[0].port(), 7102);
        let err = node_options(NodeFlags::default(), NodeConfigFile::default())
            .await
            .expect_err("no id");
        assert!(
            err.to_string().contains("--id") && err.to_string().contains("DYNAKV_ID"),
            "{err}"
        );
        let err = resolve("no-port", Duration::ZERO).await.expect_err("bad");
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
    }
}
