//! The files a node starts from: the cluster file (`cluster.toml`), the optional node config file,
//! and the data directory layout.
//!
//! ```toml
//! # cluster.toml: the same file on every node (static membership until gossip lands).
//! partitions = 64            # Q, a power of two; default dynakv_ring::DEFAULT_PARTITIONS
//! n = 3
//! r = 2
//! w = 2
//! request_timeout_ms = 5000
//! [[members]]
//! id = 1
//! addr = "127.0.0.1:7101"
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dynakv_ring::{NodeId, PartitionMap, DEFAULT_PARTITIONS};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use dynakv_core::CoreConfig;

/// One member line of the cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    /// The node id (the one its certificate names).
    pub id: u32,
    /// The UDP address it listens on.
    pub addr: SocketAddr,
}

/// The cluster file: members, partition count and quorum defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Partitions (Q), fixed when the cluster is created.
    #[serde(default = "default_partitions")]
    pub partitions: u16,
    /// Default replicas per key.
    #[serde(default = "default_n")]
    pub n: u8,
    /// Default read quorum.
    #[serde(default = "default_rw")]
    pub r: u8,
    /// Default write quorum.
    #[serde(default = "default_rw")]
    pub w: u8,
    /// Default request timeout.
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u32,
    /// Every member.
    pub members: Vec<MemberEntry>,
}

fn default_partitions() -> u16 {
    DEFAULT_PARTITIONS
}
fn default_n() -> u8 {
    3
}
fn default_rw() -> u8 {
    2
}
fn default_timeout() -> u32 {
    5_000
}

impl ClusterFile {
    /// A cluster file for `members`, with the default quorum (N = min(3, members), R = W =
    /// majority of N).
    pub fn new(members: Vec<MemberEntry>) -> ClusterFile {
        let n = u8::try_from(members.len().min(3)).unwrap_or(3).max(1);
        let majority = n / 2 + 1;
        ClusterFile {
            partitions: DEFAULT_PARTITIONS,
            n,
            r: majority,
            w: majority,
            request_timeout_ms: default_timeout(),
            members,
        }
    }

    /// Reads and checks a cluster file; errors name the file.
    pub fn load(path: &Path) -> Result<ClusterFile> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read cluster file {}: {e}", path.display()))
        })?;
        ClusterFile::parse(&text).map_err(|e| e.in_file("cluster file", path))
    }

    /// Parses and checks the text of a cluster file; the error says what is wrong.
    pub fn parse(text: &str) -> Result<ClusterFile> {
        let file: ClusterFile = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        file.check()?;
        Ok(file)
    }

    /// Writes the file (as TOML).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| Error::Config(format!("cannot encode: {e}")))?;
        std::fs::write(path, text)
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
    }

    fn check(&self) -> Result<()> {
        if self.members.is_empty() {
            return Err(Error::Config("no [[members]]".into()));
        }
        let ids: BTreeSet<u32> = self.members.iter().map(|m| m.id).collect();
        if ids.len() != self.members.len() {
            return Err(Error::Config("duplicate member id".into()));
        }
        let addrs: BTreeSet<SocketAddr> = self.members.iter().map(|m| m.addr).collect();
        if addrs.len() != self.members.len() {
            return Err(Error::Config("duplicate member address".into()));
        }
        Ok(())
    }

    /// Member ids and addresses, in id order.
    pub fn members(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut out: Vec<_> = self
            .members
            .iter()
            .map(|m| (NodeId(m.id), m.addr))
            .collect();
        out.sort();
        out
    }

    /// The initial partition map over the members.
    pub fn partition_map(&self) -> Result<PartitionMap> {
        let ids: BTreeSet<NodeId> = self.members.iter().map(|m| NodeId(m.id)).collect();
        Ok(PartitionMap::initial(self.partitions, &ids)?)
    }
}

/// The node config file, `dynakv.toml` (`--config FILE`): who the node is and where it listens,
/// and overrides of the core's limits and timers, one flat `key = value` line each (the full
/// reference is `deploy/dynakv.toml`). Every key is optional: flags and `DYNAKV_<KEY>`
/// environment variables override it ([`crate::settings`]), and an absent tuning key keeps the
/// core default ([`CoreConfig::default`]); an unknown key is an error naming it. The quorum
/// defaults and the request timeout come from the cluster file.
///
/// ```toml
/// # dynakv.toml
/// id = 1                         # this node's id (its certificate names it)
/// listen = "0.0.0.0:7101"        # UDP address to bind (QUIC, clients and peers)
/// advertise = "node1:7101"       # the address peers dial, HOST:PORT or IP:PORT
/// dir = "/var/lib/dynakv"        # data dir: node.pem, node-key.pem, ca.pem, data/
/// join = ["node2:7101"]          # seeds, for a node not in the cluster file
/// fallback_after_ms = 300        # silence before a write also goes to a fallback
/// tick_ms = 100                  # maintenance period (handoff, anti-entropy, probes, reaping)
/// handoff_batch = 64             # hints per handoff batch
/// handoff_backoff_max_ms = 30000 # longest wait between handoff attempts
/// aae_interval_ms = 1000         # one anti-entropy exchange per this period
/// scrub_per_sec = 1000           # stored records checked per second (0: no scrub)
/// read_repair_per_sec = 2000     # read-repair budget
/// tombstone_grace_ms = 60000     # tombstone-only age before a replica removes it (0 = keep)
/// sibling_warn = 25              # siblings per key before a warning
/// sibling_max = 100              # siblings per key before a write is refused
/// gossip_interval_ms = 1000      # gossip round length
/// max_transfers = 2              # partition transfers sent at the same time
/// transfer_batch = 256           # keys per transfer batch
/// metrics_addr = "127.0.0.1:9101" # plain-HTTP /metrics, /health, /ready (default: off)
/// http_addr = "127.0.0.1:8101"   # HTTPS/JSON API, /v1/kv/{key} (default: off)
/// cache_mb = 256                 # storage page cache (sled), MiB
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfigFile {
    /// This node's id (`--id`).
    pub id: Option<u32>,
    /// The UDP address to bind (`--listen`).
    pub listen: Option<SocketAddr>,
    /// The address the cluster dials, when it is not `listen` (a container, a NAT, a bind to
    /// 0.0.0.0): `HOST:PORT` or `IP:PORT`, resolved at start (`--advertise`).
    pub advertise: Option<String>,
    /// The data directory (`--dir`).
    pub dir: Option<PathBuf>,
    /// Members to join through, `HOST:PORT` or `IP:PORT` (`--join`).
    pub join: Option<Vec<String>>,
    /// The cluster file (`--cluster`; default DIR/cluster.toml).
    pub cluster: Option<PathBuf>,
    /// Start even if the key file is readable by other users (`--insecure-key-permissions`).
    pub insecure_key_permissions: Option<bool>,
    /// Longest key accepted.
    pub max_key_bytes: Option<usize>,
    /// Longest value accepted.
    pub max_value_bytes: Option<usize>,
    /// Siblings per key past which a warning is logged.
    pub sibling_warn: Option<u32>,
    /// Siblings per key past which a write is refused.
    pub sibling_max: Option<u32>,
    /// Send merged objects back to stale replicas after a get.
    pub read_repair: Option<bool>,
    /// Messages queued per peer while it is slow or unreachable; more are dropped.
    pub peer_queue: Option<usize>,
    /// Silence (ms) from a primary before a write also goes to a fallback.
    pub fallback_after_ms: Option<u32>,
    /// Period (ms) of the maintenance tick: handoff, anti-entropy, probes, reaping.
    pub tick_ms: Option<u32>,
    /// Hints per handoff batch.
    pub handoff_batch: Option<usize>,
    /// Longest wait (ms) between two handoff attempts to an unreachable owner.
    pub handoff_backoff_max_ms: Option<u32>,
    /// One anti-entropy exchange per this period (ms).
    pub aae_interval_ms: Option<u32>,
    /// Stored records the background scrub checks per second (0: no scrub).
    pub scrub_per_sec: Option<u32>,
    /// Read repairs sent per second at most.
    pub read_repair_per_sec: Option<u32>,
    /// Tombstone-only age (ms) before a tombstone may be reaped; 0 keeps tombstones forever.
    pub tombstone_grace_ms: Option<u32>,
    /// Gossip round length (ms).
    pub gossip_interval_ms: Option<u32>,
    /// Partition transfers sent at the same time at most.
    pub max_transfers: Option<usize>,
    /// Keys per partition-transfer batch.
    pub transfer_batch: Option<usize>,
    /// Serve client requests on connections that present a node certificate (default false:
    /// node certificates are for peers; clients use `dynakv ca issue-client` certificates).
    pub allow_node_clients: Option<bool>,
    /// Client requests served at the same time at most; more are answered "overloaded" at
    /// once (default 256).
    pub max_inflight_requests: Option<usize>,
    /// Client requests served at the same time on one connection at most; more are answered
    /// "overloaded" at once (default 128).
    pub max_requests_per_connection: Option<usize>,
    /// Client connections from one IP address at the same time at most; more are closed at
    /// the handshake (default 256).
    pub max_client_connections_per_ip: Option<usize>,
    /// Where to serve `/metrics`, `/health` and `/ready` over plain HTTP, e.g.
    /// "127.0.0.1:9101" (default: nowhere; `dynakv node --metrics-addr` overrides it).
    pub metrics_addr: Option<SocketAddr>,
    /// Where to serve the HTTPS/JSON API (`/v1/kv/{key}`, client certificates as for QUIC
    /// clients), e.g. "127.0.0.1:8101" (default: nowhere; `dynakv node --http-addr` overrides).
    pub http_addr: Option<SocketAddr>,
    /// The storage engine's page cache in MiB (sled's `cache_capacity`), the bound on what the
    /// store keeps in memory (default [`DEFAULT_CACHE_MB`]).
    pub cache_mb: Option<u64>,
}

/// The storage page cache of a node without `cache_mb` in its config file, in MiB.
pub const DEFAULT_CACHE_MB: u64 = 256;

impl NodeConfigFile {
    /// Reads a node config file; errors name the file (and an unknown key by name).
    pub fn load(path: &Path) -> Result<NodeConfigFile> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        NodeConfigFile::parse(&text).map_err(|e| e.in_file("config file", path))
    }

    /// The storage page cache in bytes (`cache_mb`, or the default); at least 1 MiB.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_mb
            .unwrap_or(DEFAULT_CACHE_MB)
            .max(1)
            .saturating_mul(1 << 20)
    }

    /// Parses the text of a node config file; the error is one line ("line L: what").
    pub fn parse(text: &str) -> Result<NodeConfigFile> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let message = e.message().trim_end().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let upto = text.get(..span.start).unwrap_or(text);
                    Error::Config(format!(
                        "line {}: {message}",
                        upto.matches('\n').count() + 1
                    ))
                }
                None => Error::Config(message),
            }
        })
    }

    /// The core config for node `id` in `cluster`, with this file's overrides; fails with the
    /// core's explanation when the combination is not valid.
    pub fn core_config(&self, id: NodeId, cluster: &ClusterFile) -> Result<CoreConfig> {
        let d = CoreConfig::default();
        let cfg = CoreConfig {
            node: id,
            n: cluster.n,
            r: cluster.r,
            w: cluster.w,
            request_timeout_ms: cluster.request_timeout_ms,
            max_key_bytes: self.max_key_bytes.unwrap_or(d.max_key_bytes),
            max_value_bytes: self.max_value_bytes.unwrap_or(d.max_value_bytes),
            sibling_warn: self.sibling_warn.unwrap_or(d.sibling_warn),
            sibling_max: self.sibling_max.unwrap_or(d.sibling_max),
            read_repair: self.read_repair.unwrap_or(d.read_repair),
            fallback_after_ms: self.fallback_after_ms.unwrap_or(d.fallback_after_ms),
            tick_ms: self.tick_ms.unwrap_or(d.tick_ms),
            handoff_batch: self.handoff_batch.unwrap_or(d.handoff_batch),
            handoff_backoff_max_ms: self
                .handoff_backoff_max_ms
                .unwrap_or(d.handoff_backoff_max_ms),
            aae_interval_ms: self.aae_interval_ms.unwrap_or(d.aae_interval_ms),
            scrub_per_sec: self.scrub_per_sec.unwrap_or(d.scrub_per_sec),
            read_repair_per_sec: self.read_repair_per_sec.unwrap_or(d.read_repair_per_sec),
            tombstone_grace_ms: self.tombstone_grace_ms.unwrap_or(d.tombstone_grace_ms),
            gossip_interval_ms: self.gossip_interval_ms.unwrap_or(d.gossip_interval_ms),
            max_transfers: self.max_transfers.unwrap_or(d.max_transfers),
            transfer_batch: self.transfer_batch.unwrap_or(d.transfer_batch),
            ..d
        };
        match cfg.validate() {
            // The same "invalid configuration" as the file's own checks.
            Err(dynakv_core::Error::Config(m)) => Err(Error::Config(m)),
            Err(e) => Err(e.into()),
            Ok(()) => Ok(cfg),
        }
    }
}

/// The files inside a node's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The layout under `root` (nothing is checked yet; see [`DataDir::check`]).
    pub fn new(root: &Path) -> DataDir {
        DataDir {
            root: root.to_path_buf(),
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sled database directory.
    pub fn db(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The copy of the cluster CA certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// The default cluster file location.
    pub fn cluster_file(&self) -> PathBuf {
        self.root.join("cluster.toml")
    }

    /// Fails with one clear line when the directory is missing or lacks its certificates.
    pub fn check(&self) -> Result<()> {
        if !self.root.is_dir() {
            return Err(Error::DataDir(format!(
                "{} does not exist or is not a directory (create it with `dynakv ca issue --id ID --dir CA_DIR --out {}`)",
                self.root.display(),
                self.root.display()
            )));
        }
        for f in ["node.pem", "node-key.pem", "ca.pem"] {
            if !self.root.join(f).is_file() {
                return Err(Error::DataDir(format!(
                    "{} is missing {f} (issue it with `dynakv ca issue --id ID --dir CA_DIR --out {}`)",
                    self.root.display(),
                    self.root.display()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_file_defaults_and_checks() -> Result<()> {
        let f: ClusterFile = toml::from_str(
            "[[members]]\nid = 1\naddr = \"127.0.0.1:7101\"\n[[members]]\nid = 2\naddr = \"127.0.0.1:7102\"\n",
        )
        .map_err(|e| Error::Config(e.to_string()))?;
        assert_eq!((f.partitions, f.n, f.r, f.w), (DEFAULT_PARTITIONS, 3, 2, 2));
        assert!(f.check().is_ok());
        assert_eq!(f.partition_map()?.members().len(), 2);
        let dup = ClusterFile::new(vec![f.members[0].clone(), f.members[0].clone()]);
        assert!(dup.check().is_err());
        Ok(())
    }

    fn cluster() -> ClusterFile {
        ClusterFile::new(vec![MemberEntry {
            id: 1,
            addr: SocketAddr::from(([127, 0, 0, 1], 7101)),
        }])
    }

    #[test]
    fn empty_node_config_keeps_every_core_default() -> Result<()> {
        let cfg = NodeConfigFile::parse("")?.core_config(NodeId(1), &cluster())?;
        let d = CoreConfig::default();
        assert_eq!(
            cfg,
            CoreConfig {
                node: NodeId(1),
                n: 1,
                r: 1,
                w: 1,
                ..d
            }
        );
        Ok(())
    }

    #[test]
    fn node_config_sets_every_documented_knob() -> Result<()> {
        let text = "fallback_after_ms = 150\ntick_ms = 50\nhandoff_batch = 8\n\
            handoff_backoff_max_ms = 2000\naae_interval_ms = 200\nread_repair_per_sec = 10\n\
            tombstone_grace_ms = 12000\nsibling_warn = 5\nsibling_max = 9\n\
            gossip_interval_ms = 250\nmax_transfers = 3\ntransfer_batch = 32\n\
            read_repair = false\nmax_key_bytes = 100\nmax_value_bytes = 1000\npeer_queue = 7\n\
            cache_mb = 32\n";
        let file = NodeConfigFile::parse(text)?;
        assert_eq!(file.peer_queue, Some(7));
        assert_eq!(file.cache_bytes(), 32 << 20);
        assert_eq!(
            NodeConfigFile::default().cache_bytes(),
            DEFAULT_CACHE_MB << 20
        );
        // Zero would leave sled no cache at all; the floor is 1 MiB.
        assert_eq!(
            NodeConfigFile::parse("cache_mb = 0\n")?.cache_bytes(),
            1 << 20
        );
        let cfg = file.core_config(NodeId(1), &cluster())?;
        assert_eq!(
            (cfg.fallback_after_ms, cfg.tick_ms, cfg.handoff_batch),
            (150, 50, 8)
        );
        assert_eq!(
            (
                cfg.handoff_backoff_max_ms,
                cfg.aae_interval_ms,
                cfg.read_repair_per_sec
            ),
            (2000, 200, 10)
        );
        assert_eq!(
            (cfg.tombstone_grace_ms, cfg.sibling_warn, cfg.sibling_max),
            (12000, 5, 9)
        );
        assert_eq!(
            (
                cfg.gossip_interval_ms,
                cfg.max_transfers,
                cfg.transfer_batch
            ),
            (250, 3, 32)
        );
        assert_eq!(
            (cfg.read_repair, cfg.max_key_bytes, cfg.max_value_bytes),
            (false, 100, 1000)
        );
        Ok(())
    }

    #[test]
    fn node_config_refuses_unknown_keys_and_bad_combinations() {
        let err = NodeConfigFile::parse("aae_interval = 200\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown field `aae_interval`"), "{err}");
        let err = NodeConfigFile::parse("[core]\ntick_ms = 5\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown field `core`"), "{err}");
        // The tombstone delay is no safety bound any more: a short one is taken as given.
        let short_grace = NodeConfigFile {
            tombstone_grace_ms: Some(100),
            ..NodeConfigFile::default()
        };
        let cfg = short_grace
            .core_config(NodeId(1), &cluster())
            .expect("a short tombstone delay is valid");
        assert_eq!(cfg.tombstone_grace_ms, 100);
        let zero_tick = NodeConfigFile {
            tick_ms: Some(0),
            ..NodeConfigFile::default()
        };
        assert!(zero_tick.core_config(NodeId(1), &cluster()).is_err());
    }
}
