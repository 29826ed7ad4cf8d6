//! The `dynakv` command line: argument definitions and dispatch.
//!
//! # Layout
//! - `mod.rs` (this file): the clap definitions of every command and flag.
//! - `conn`: the `--node`/`--ca` flags (env `DYNAKV_NODES`, `DYNAKV_CA`) that build the
//!   `dynakv_client::Client` through which every command talks to nodes.
//! - `kv`: `put`, `get` and `delete`.
//! - `status`: `status`, as a readable listing or one JSON object.
//! - `rolling`: `safe-to-stop`, the check before stopping a node in a rolling restart.
//! - `ca`: `ca init` and `ca issue`.
//! - `config_check`: `config check`, and the options `node` starts with (flags, environment
//!   and dynakv.toml merged).
//! - `admin`: `join`, `leave` and `remove` (membership changes).
//! - `dev`: the one-command local cluster, and `dev add` to grow it.
//! - `bench`: the closed-loop load generator.
//! - `backup`, `backup_files`, `restore`: backups (full and incremental), their files and
//!   checks, and restoring them by merging.

mod admin;
mod backup;
mod backup_files;
mod bench;
mod ca;
mod config_check;
mod conn;
mod dev;
mod dev_add;
mod dev_ctl;
mod kv;
mod restore;
mod rolling;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use conn::Target;

/// dynakv: a leaderless, Dynamo-style key-value store.
///
/// Start a local cluster with `dynakv dev`, copy the `export` line it prints, then use
/// `dynakv put`/`get`/`delete`/`status`. Logs go to stderr; set RUST_LOG (default: `info` for
/// `node` and `dev`, `warn` for the other commands).
#[derive(Debug, Parser)]
#[command(name = "dynakv", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local cluster: N nodes, each its own process, on 127.0.0.1:(P+1)..(P+N).
    ///
    /// Creates DIR/ca.pem, DIR/ca-key.pem, DIR/cluster.toml and DIR/node-I/ (data, certificate,
    /// log node.log) the first time; run again on the same DIR to restart the same cluster with
    /// its data (nodes added with `dev add` included, nodes that left excluded). Stays in the
    /// foreground; Ctrl-C (SIGINT) or SIGTERM stops every node cleanly. `dynakv dev add` (in
    /// another terminal) grows the running cluster by one node.
    Dev(DevArgs),
    /// Run one node (what `dev` starts for each node).
    ///
    /// DIR must hold node.pem, node-key.pem and ca.pem (see `dynakv ca issue`); the database goes
    /// to DIR/data. A node listed in the cluster file (`--cluster`, default DIR/cluster.toml)
    /// founds the cluster with the other members; any other node joins through `--join SEED`
    /// (or waits for `dynakv join SEED --node LISTEN`). A node that was removed from the
    /// cluster stops by itself (exit 0) about 10 s later.
    Node(NodeArgs),
    /// Make the node at --node, which is not in a cluster yet, join the cluster of SEED.
    ///
    /// Prints {"node":"ADDR","result":"node 4 is joining through node 1 at ..."}. The node
    /// checks SEED's certificate (mutual TLS, same cluster CA) and learns its id from it.
    Join(JoinArgs),
    /// The node at --node leaves the cluster: it hands its partitions to the others, then
    /// stops by itself once removed. Prints {"node":"ADDR","result":"node 2 is leaving"}.
    Leave(AdminArgs),
    /// Remove a dead node NODE from the cluster for good (run against any live member);
    /// its partitions are rebuilt from the other replicas. A node that is still up and
    /// reachable is refused unless --force (use `leave` for it). Prints one JSON line.
    Remove(RemoveArgs),
    /// Create a cluster CA or issue node certificates (for nodes started by hand).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Check a node's configuration without starting it.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a value; prints {"context":"TOKEN","acks":A,"primary_acks":P,"fallback_acks":F}.
    ///
    /// `context` is the context after the write. Without --context the write is blind: it
    /// becomes a sibling of whatever is stored; pass the context of a `get` to replace the values
    /// that get returned. `acks` counts the replicas that acknowledged before the reply:
    /// `primary_acks` from the key's own replicas, `fallback_acks` from other nodes holding the
    /// write as a hint for a primary that is down (sloppy quorum). --pw demands primary acks.
    Put(PutArgs),
    /// Read every sibling of a key; prints {"key":..,"siblings":[..],"context":"TOKEN"}.
    ///
    /// A missing key prints "siblings":[] (exit 0). When any value is not UTF-8, every sibling is
    /// printed in standard base64 and the object carries "encoding":"base64".
    Get(GetArgs),
    /// Delete the values a context covers (writes a tombstone); prints the same JSON as `put`.
    Delete(DeleteArgs),
    /// Show members, partitions per node, who the node sees as up or down, pending hints,
    /// partition transfers and the node's counters.
    ///
    /// --json prints one object: node, members (id, addr, up, down, membership, partitions),
    /// partition_count, n, r, w, pending_ops, hints_pending (target node id -> hints held for
    /// it), transfers (direction, partition, peer, keys, total, resent, done), down (peers this
    /// node marked down), stats (the core's counters) and storage_failure (null, or why the node
    /// stopped serving after a failed disk sync).
    Status(StatusArgs),
    /// May the node at --node be stopped now (rolling restart, upgrade)? Safe when every key
    /// keeps its read and write quorums without it (given the members already down) and no
    /// partition transfer or membership change is in progress. Prints
    /// {"node":ID,"safe":BOOL,"reasons":[..],"notes":[..]}; exit 0 when safe, 1 when not.
    SafeToStop(StatusArgs),
    /// Closed-loop load generator: reports throughput and p50/p99/p999 latency.
    Bench(bench::BenchArgs),
    /// Back up every key of a live cluster into --out DIR (needs the admin role).
    ///
    /// Every partition is read from all of its replicas and merged, so no write that reached a
    /// primary is missed; the backup first waits for pending hints and transfers to drain.
    /// One checksummed file per partition and a manifest (written last). --since DIR takes an
    /// incremental backup: only keys that changed since that backup. `dynakv backup verify
    /// DIR` checks every checksum. Prints one JSON line.
    Backup(backup::BackupArgs),
    /// Restore a backup into a cluster, new or existing, by merging (needs the admin role).
    ///
    /// Every file is checked first; a newer write or a delete the cluster holds is never
    /// undone. An incremental backup brings its whole chain. Interrupted? Run it again: a
    /// checkpoint skips what is done. Prints one JSON line.
    Restore(restore::RestoreArgs),
}

/// Flags of `dynakv dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// `add`: grow the running dev cluster by one node; `stop`, `start`, `kill`: control one
    /// node of it.
    #[command(subcommand)]
    pub action: Option<DevAction>,
    /// Number of nodes (used when DIR holds no cluster yet).
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Directory for the CA, cluster file and node data.
    #[arg(long, default_value = "./dynakv-dev")]
    pub dir: PathBuf,
    /// Node I listens on UDP 127.0.0.1:(P+I).
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// A node config file (docs/AVAILABILITY.md, "Knobs") for every node of the dev cluster:
    /// copied to DIR/node.toml, which every node started in DIR (added ones too) reads, this
    /// run and later ones.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `dynakv dev` subcommands.
#[derive(Debug, Subcommand)]
pub enum DevAction {
    /// Add one node to the running dev cluster in DIR: issue its certificate, create
    /// DIR/node-I, start it (detached, pid in DIR/node-I/pid, log DIR/node-I/node.log) joining
    /// through node 1, and print its address. The foreground `dynakv dev` stops it on Ctrl-C
    /// and restarts it next time.
    Add {
        /// Directory of the dev cluster.
        #[arg(long, default_value = "./dynakv-dev")]
        dir: PathBuf,
        /// The dev cluster's base port (node I listens on 127.0.0.1:(P+I)).
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
    },
    /// Stop node ID of the running dev cluster cleanly (SIGTERM; waits until it has stopped).
    Stop {
        /// The node's id.
        id: u32,
        /// Directory of the dev cluster.
        #[arg(long, default_value = "./dynakv-dev")]
        dir: PathBuf,
    },
    /// Start node ID of the dev cluster again, in the background (pid in DIR/node-ID/pid).
    Start {
        /// The node's id.
        id: u32,
        /// Directory of the dev cluster.
        #[arg(long, default_value = "./dynakv-dev")]
        dir: PathBuf,
    },
    /// Kill node ID of the running dev cluster (SIGKILL: a crash).
    Kill {
        /// The node's id.
        id: u32,
        /// Directory of the dev cluster.
        #[arg(long, default_value = "./dynakv-dev")]
        dir: PathBuf,
    },
}

/// Flags of `dynakv join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Address of a member of the cluster to join.
    pub seed: SocketAddr,
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `dynakv leave`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `dynakv remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The id of the node to remove.
    #[arg(value_name = "NODE")]
    pub id: u32,
    /// Remove it even if it is up and reachable (whatever only it holds is lost; prefer
    /// `dynakv leave --node ADDR`, which hands its data off first).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `dynakv node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's id (must match its certificate, and its cluster file entry if it has one).
    #[arg(long)]
    pub id: Option<u32>,
    /// UDP address to listen on, e.g. 127.0.0.1:7101 or 0.0.0.0:7101.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The address the cluster dials this node at, when it is not --listen (a container, a
    /// bind to 0.0.0.0): HOST:PORT or IP:PORT, resolved at start.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Data directory (node.pem, node-key.pem, ca.pem; the database goes to DIR/data).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Address of a member to join through, HOST:PORT or IP:PORT (repeatable; tried in turn,
    /// with backoff), for a node that is not in the cluster file.
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Vec<String>,
    /// The node config file, dynakv.toml (deploy/dynakv.toml is the commented reference):
    /// id, listen, advertise, dir, join, cluster, metrics_addr, http_addr, and the limits and
    /// timers (docs/AVAILABILITY.md "Knobs", docs/SECURITY.md). Every key can also be set by
    /// the environment variable DYNAKV_<KEY> (DYNAKV_CACHE_MB=64); flags override both, and
    /// the environment overrides the file. Unknown keys are an error. With every setting in
    /// the file, `dynakv node --config FILE` alone starts the node.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Cluster file (TOML: partitions, n, r, w, request_timeout_ms, `[[members]]` id/addr).
    /// Default: DIR/cluster.toml.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// Start even if DIR/node-key.pem is readable by other users (by default the node refuses
    /// and says which `chmod` fixes it).
    #[arg(long)]
    pub insecure_key_permissions: bool,
    /// Serve Prometheus `/metrics`, `/health` (live) and `/ready` (valid member, storage
    /// working) over plain HTTP on this address, e.g. 127.0.0.1:9101 (overrides the node
    /// config's `metrics_addr`; default: not served).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the HTTPS/JSON API (`GET|PUT|DELETE /v1/kv/{key}`, docs/HTTP.md) over TCP on this
    /// address, e.g. 127.0.0.1:8101; clients present the same certificates as QUIC clients
    /// (overrides the node config's `http_addr`; default: not served).
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
}

/// `dynakv config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check what `dynakv node` with the same flags would start with (dynakv.toml, the
    /// DYNAKV_<KEY> variables and the flags merged; host names resolved): the data directory,
    /// the certificate, the cluster file, the limits. Prints the effective settings as one
    /// JSON line, or the first problem (exit 1).
    Check(NodeArgs),
}

/// `dynakv ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new cluster CA: writes DIR/ca.pem and DIR/ca-key.pem (refuses to overwrite).
    Init {
        /// Where to write the CA.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate for node ID with the CA in DIR: writes OUT/node.pem, OUT/node-key.pem
    /// and a copy of ca.pem, ready for `dynakv node --dir OUT`.
    Issue {
        /// The node id the certificate names.
        #[arg(long)]
        id: u32,
        /// The directory holding ca.pem and ca-key.pem.
        #[arg(long)]
        dir: PathBuf,
        /// The node's data directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a client certificate with the CA in DIR: writes OUT/NAME.pem and OUT/NAME-key.pem
    /// (mode 0600). The ROLE is part of the certificate: read (get, status), write (read plus
    /// put and delete) or admin (everything, membership changes included). Point the CLI at it
    /// with --cert/--key or DYNAKV_CERT/DYNAKV_KEY.
    IssueClient {
        /// The client's name (1 to 63 of a-z, 0-9 and '-'), shown in node logs.
        #[arg(long)]
        name: String,
        /// What the client may do.
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
        /// The directory holding ca.pem and ca-key.pem.
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the certificate and key.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Quorum and timeout flags shared by the key commands.
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct QuorumArgs {
    /// Replicas per key (default: the cluster's N).
    #[arg(long)]
    pub n: Option<u8>,
    /// Request timeout in milliseconds (default: the cluster's).
    #[arg(long, value_name = "MS")]
    pub timeout: Option<u32>,
}

/// Flags of `dynakv put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Context token from an earlier get or put (default: empty, a blind write).
    #[arg(long, value_name = "TOKEN")]
    pub context: Option<String>,
    /// Acknowledgements to wait for (default: the cluster's W).
    #[arg(long)]
    pub w: Option<u8>,
    /// Acknowledgements that must come from primary replicas (default 0); fallbacks do not
    /// count, so the put fails instead of relying on hints. At most W.
    #[arg(long)]
    pub pw: Option<u8>,
    #[command(flatten)]
    pub quorum: QuorumArgs,
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `dynakv get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// Replies to wait for (default: the cluster's R).
    #[arg(long)]
    pub r: Option<u8>,
    /// Replies that must come from primary replicas (default 0); fallbacks do not count.
    /// At most R.
    #[arg(long)]
    pub pr: Option<u8>,
    #[command(flatten)]
    pub quorum: QuorumArgs,
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `dynakv delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The key.
    pub key: String,
    /// Context token from a get: the values it covers are deleted.
    #[arg(long, value_name = "TOKEN")]
    pub context: Option<String>,
    /// Acknowledgements to wait for (default: the cluster's W).
    #[arg(long)]
    pub w: Option<u8>,
    /// Acknowledgements that must come from primary replicas (default 0). At most W.
    #[arg(long)]
    pub pw: Option<u8>,
    #[command(flatten)]
    pub quorum: QuorumArgs,
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `dynakv status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Runs a parsed command. `Ok(())` means exit 0.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Node(args) => {
            let opts = config_check::node_options(&args).await?;
            dynakv_server::run(opts, dynakv_server::shutdown_signal()).await?;
            Ok(())
        }
        Command::Config(ConfigCommand::Check(args)) => config_check::run(args).await,
        Command::Ca(cmd) => ca::run(cmd),
        Command::Put(args) => kv::put(args).await,
        Command::Get(args) => kv::get(args).await,
        Command::Delete(args) => kv::delete(args).await,
        Command::Status(args) => status::run(args).await,
        Command::SafeToStop(args) => rolling::run(args).await,
        Command::Join(args) => admin::join(args.seed, args.target).await,
        Command::Leave(args) => admin::leave(args.target).await,
        Command::Remove(args) => admin::remove(args.id, args.force, args.target).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Backup(args) => backup::run(args).await,
        Command::Restore(args) => restore::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    /// clap checks a command's definition (unique argument ids, valid defaults) only when that
    /// command is parsed in a debug build; check all of them at once.
    #[test]
    fn every_command_definition_is_valid() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
