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

use crate::core::CoreConfig;
use crate::error::{Error, Result};

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
        let file: ClusterFile = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("bad cluster file {}: {e}", path.display())))?;
        file.check()
            .map_err(|e| Error::Config(format!("bad cluster file {}: {e}", path.display())))?;
        Ok(file)
    }

    /// Writes the file (as TOML).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).map_err(|e| Error::Encode(e.to_string()))?;
        std::fs::write(path, text)
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.members.is_empty() {
            return Err("no [[members]]".into());
        }
        let ids: BTreeSet<u32> = self.members.iter().map(|m| m.id).collect();
        if ids.len() != self.members.len() {
            return Err("duplicate member id".into());
        }
        let addrs: BTreeSet<SocketAddr> = self.members.iter().map(|m| m.addr).collect();
        if addrs.len() != self.members.len() {
            return Err("duplicate member address".into());
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

/// The optional node config file (`--config FILE`): overrides of the core's limits. Every field
/// is optional; the quorum defaults come from the cluster file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfigFile {
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
}

impl NodeConfigFile {
    /// Reads a node config file; errors name the file.
    pub fn load(path: &Path) -> Result<NodeConfigFile> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| Error::Config(format!("bad config file {}: {e}", path.display())))
    }

    /// The core config for node `id` in `cluster`, with this file's overrides.
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
            planted_bug: None,
            ..d
        };
        cfg.validate().map_err(Error::Config)?;
        Ok(cfg)
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
}
