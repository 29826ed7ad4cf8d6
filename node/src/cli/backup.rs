//! `dynakv backup` (full or incremental) and `dynakv backup verify`.
//!
//! A backup reads every partition from *every* one of its replicas and merges what they hold
//! (the DVV merge keeps every version any replica has), so a write acknowledged by any primary
//! is in it. Writes held only by fallbacks as hints are not on a primary yet: the backup waits
//! for hints and partition transfers to drain first, and refuses if they do not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Args, Subcommand};
use dynakv_client::{Client, StoredObject};
use dynakv_proto::codec::backup::{backup_header, encode_backup_record};
use dynakv_ring::{NodeId, PartitionId};

use super::backup_files::{
    chain_hashes, file_name, hex, object_hash, progress, progress_done, read_manifest, verify,
    write_durable, write_manifest, FileEntry, Manifest, Since, MANIFEST_FORMAT,
};
use super::conn::Target;

/// Keys asked for per scan page.
const PAGE: u32 = 512;

/// Flags of `dynakv backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// `verify DIR` checks a backup instead of taking one.
    #[command(subcommand)]
    pub action: Option<BackupAction>,
    /// The new backup's directory (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Take an incremental backup on top of the backup in DIR (full or incremental): only
    /// keys whose stored versions changed since are written.
    #[arg(long, value_name = "DIR")]
    pub since: Option<PathBuf>,
    /// How long to wait for pending hints and partition transfers to drain before giving up
    /// (a write held only as a hint is not on a primary yet), in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub wait: u64,
    /// Back up even with hints or transfers pending (writes held only by fallbacks may be
    /// missing from the backup).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub target: Target,
}

/// `dynakv backup` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Check every file of a backup (and of the backups it adds to) against its checksums.
    Verify {
        /// The backup's directory.
        dir: PathBuf,
    },
}

/// `dynakv backup`.
pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    if let Some(BackupAction::Verify { dir }) = &args.action {
        return verify_chain(dir);
    }
    let Some(out) = args.out.clone() else {
        bail!("dynakv backup needs --out DIR (or `dynakv backup verify DIR`)");
    };
    prepare_out(&out)?;
    let base = match &args.since {
        Some(dir) => {
            let m = read_manifest(dir)?;
            let abs = dir
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            let hashes = chain_hashes(dir)
                .with_context(|| format!("the backup in {} cannot be read", dir.display()))?;
            Some((Since { id: m.id, dir: abs }, hashes))
        }
        None => None,
    };
    let client = Client::connect(&args.target.nodes, &args.target.credentials()?).await?;
    let info = client.cluster_info().await?;
    let members: BTreeMap<NodeId, SocketAddr> = info.members.iter().copied().collect();
    wait_quiet(
        &args.target,
        &members,
        Duration::from_secs(args.wait),
        args.force,
    )
    .await?;
    let started = Instant::now();
    let mut files = Vec::new();
    let mut keys = 0u64;
    let q = info.map.partition_count();
    for p in 0..q {
        let replicas = info
            .map
            .preference_list(PartitionId(p), usize::from(info.n));
        let merged = read_partition(&client, &members, PartitionId(p), &replicas).await?;
        let mut bytes = backup_header(p).to_vec();
        let mut written = 0u64;
        for (k, o) in &merged {
            if let Some((_, old)) = &base {
                if old.get(k) == Some(&object_hash(o)?) {
                    continue;
                }
            }
            bytes.extend(encode_backup_record(k, o)?);
            written += 1;
        }
        let file = file_name(p);
        write_durable(&out.join(&file), &bytes)?;
        files.push(FileEntry {
            partition: p,
            file,
            keys: written,
            bytes: bytes.len() as u64,
            xxh3: hex(xxhash_rust::xxh3::xxh3_64(&bytes)),
        });
        keys += written;
        progress(&format!("backed up partition {}/{q} ({keys} keys)", p + 1));
    }
    progress_done();
    let created_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let id_input = format!("{created_unix_ms}:{keys}:{:?}", files);
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        id: hex(xxhash_rust::xxh3::xxh3_64(id_input.as_bytes())),
        created_unix_ms,
        since: base.map(|(s, _)| s),
        partitions: q,
        n: info.n,
        keys,
        files,
    };
    write_manifest(&out, &manifest)?;
    client.close().await;
    println!(
        "{}",
        serde_json::json!({
            "backup": out.display().to_string(),
            "id": manifest.id,
            "since": manifest.since.as_ref().map(|s| s.id.clone()),
            "partitions": q,
            "keys": keys,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// The output directory must be new or empty: a backup never overwrites another.
fn prepare_out(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let mut entries =
            std::fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty; a backup goes to a new directory",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))
}

/// Waits until no member holds hints or has a partition transfer in progress (each is a write
/// that may not be on every primary yet), at most `wait`; refuses afterwards unless `force`.
async fn wait_quiet(
    target: &Target,
    members: &BTreeMap<NodeId, SocketAddr>,
    wait: Duration,
    force: bool,
) -> anyhow::Result<()> {
    let creds = target.credentials()?;
    let deadline = Instant::now() + wait;
    loop {
        let mut busy = Vec::new();
        for (id, addr) in members {
            let status = Client::direct(*addr, &creds)?
                .status()
                .await
                .with_context(|| {
                    format!("node {id} at {addr} did not answer; a backup needs every member up")
                })?;
            let hints: u64 = status.hints_pending.values().sum();
            let transfers = status.transfers.iter().filter(|t| !t.done).count();
            if hints > 0 || transfers > 0 {
                busy.push(format!(
                    "node {id}: {hints} hints, {transfers} transfers pending"
                ));
            }
        }
        if busy.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let why = busy.join("; ");
            if force {
                eprintln!(
                    "warning: backing up with {why}: writes held only by fallbacks may be missing"
                );
                return Ok(());
            }
            bail!("{why}: writes held only as hints are not on their primaries yet; wait for handoff (dynakv status) or pass --force");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every key of partition `p`, merged across all of its replicas (each must answer).
async fn read_partition(
    client: &Client,
    members: &BTreeMap<NodeId, SocketAddr>,
    p: PartitionId,
    replicas: &[NodeId],
) -> anyhow::Result<BTreeMap<Bytes, StoredObject>> {
    let mut merged: BTreeMap<Bytes, StoredObject> = BTreeMap::new();
    for id in replicas {
        let addr = members
            .get(id)
            .with_context(|| format!("partition {p}: replica {id} is not a member"))?;
        let mut after = None;
        loop {
            let page = client
                .scan_page(*addr, p, after.take(), PAGE)
                .await
                .with_context(|| {
                    format!("partition {p}: replica {id} at {addr} did not answer; every replica must answer so that no write is missed")
                })?;
            for (k, o) in page.items {
                let next = match merged.get(&k) {
                    Some(old) => old.sync(&o),
                    None => o,
                };
                merged.insert(k, next);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(merged)
}

/// `dynakv backup verify DIR`: every file of the chain, with one line per damaged file.
fn verify_chain(dir: &Path) -> anyhow::Result<()> {
    let chain = super::backup_files::chain(dir)?;
    let mut keys = 0;
    for (d, m) in &chain {
        keys += verify(d, m)?;
    }
    println!(
        "{}",
        serde_json::json!({
            "backup": dir.display().to_string(),
            "ok": true,
            "backups_in_chain": chain.len(),
            "keys": keys,
        })
    );
    Ok(())
}
