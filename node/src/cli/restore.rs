//! `dynakv restore DIR`: writes a backup (and every backup it adds to, oldest first) into a
//! cluster, new or existing, by merging: each key's stored object goes to its replicas as
//! anti-entropy would send it, so a restore never overwrites a newer write and never brings
//! back a value a delete the cluster holds covers. Every file is checked against its checksums
//! before anything from it is sent; progress is checkpointed per file, so an interrupted
//! restore resumes where it stopped (merging twice is harmless).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use dynakv_client::{Client, Options};
use serde::{Deserialize, Serialize};

use super::backup_files::{chain, progress, progress_done, read_checked, verify, write_durable};
use super::conn::Target;

/// Restores in flight at once.
const IN_FLIGHT: usize = 32;
/// Tries per key for failures worth retrying (timeouts, a node down, overload).
const TRIES: u32 = 5;

/// Flags of `dynakv restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup's directory (a full backup, or an incremental one: its whole chain is
    /// restored, oldest first).
    pub dir: PathBuf,
    /// Where progress is checkpointed (default: DIR/restore-progress.json); a restore started
    /// again with the same file skips what was done.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Acknowledgements each key waits for (default: the cluster's W).
    #[arg(long)]
    pub w: Option<u8>,
    #[command(flatten)]
    pub target: Target,
}

/// The checkpoint: which files of which backups are restored, into which cluster.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// The cluster restored into (its CA certificate and member ids, hashed): a checkpoint of a
    /// restore into another cluster (a drill into staging) must not skip anything here.
    #[serde(default)]
    cluster: String,
    /// (backup id, partition file) pairs already restored.
    done: Vec<(String, String)>,
}

/// `dynakv restore`.
pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let chain = chain(&args.dir)?;
    // Everything is checked before anything is sent: a damaged backup is reported, never
    // half-loaded.
    let mut total = 0u64;
    for (d, m) in &chain {
        total += verify(d, m)?;
    }
    let checkpoint = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| args.dir.join("restore-progress.json"));
    let client = Arc::new(Client::connect(&args.target.nodes, &args.target.credentials()?).await?);
    let info = client.cluster_info().await?;
    let mut ids: Vec<u32> = info.members.iter().map(|(id, _)| id.0).collect();
    ids.sort_unstable();
    let ca = std::fs::read(&args.target.ca)
        .with_context(|| format!("cannot read {}", args.target.ca.display()))?;
    let cluster = super::backup_files::hex(xxhash_rust::xxh3::xxh3_64(
        format!(
            "{}:{ids:?}",
            super::backup_files::hex(xxhash_rust::xxh3::xxh3_64(&ca))
        )
        .as_bytes(),
    ));
    let mut done = read_progress(&checkpoint)?;
    if done.cluster != cluster {
        if !done.done.is_empty() {
            eprintln!(
                "note: {} is the checkpoint of a restore into another cluster; starting over",
                checkpoint.display()
            );
        }
        done = Progress {
            cluster,
            done: Vec::new(),
        };
    }
    // Written before anything is sent: a checkpoint that cannot be written (a read-only
    // backup directory) is said now, not after the first file.
    write_progress(&checkpoint, &done).with_context(|| {
        format!(
            "cannot write the restore checkpoint {} (pass --checkpoint FILE)",
            checkpoint.display()
        )
    })?;
    let opts = Options {
        w: args.w,
        ..Options::default()
    };
    let started = Instant::now();
    let (mut restored, mut skipped) = (0u64, 0u64);
    let mut failed: Vec<String> = Vec::new();
    for (d, m) in &chain {
        for entry in &m.files {
            let key = (m.id.clone(), entry.file.clone());
            if done.done.contains(&key) {
                skipped += entry.keys;
                continue;
            }
            let items = read_checked(d, entry)?;
            let mut tasks = tokio::task::JoinSet::new();
            let mut failed_here = Vec::new();
            for (k, o) in items {
                while tasks.len() >= IN_FLIGHT {
                    join_one(&mut tasks, &mut failed_here).await;
                }
                let client = client.clone();
                tasks.spawn(async move { restore_key(&client, k, o, opts).await });
                restored += 1;
            }
            while !tasks.is_empty() {
                join_one(&mut tasks, &mut failed_here).await;
            }
            if failed_here.is_empty() {
                done.done.push(key);
                write_progress(&checkpoint, &done)?;
            } else {
                // Not checkpointed: a later run retries this file (the rest of it merges
                // again harmlessly).
                failed.append(&mut failed_here);
            }
            progress(&format!("restored {}/{total} keys", restored + skipped));
        }
    }
    progress_done();
    client.close().await;
    println!(
        "{}",
        serde_json::json!({
            "restored": args.dir.display().to_string(),
            "backups_in_chain": chain.len(),
            "keys": restored - failed.len() as u64,
            "failed": failed.len(),
            "skipped_from_checkpoint": skipped,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    if !failed.is_empty() {
        bail!(
            "{} keys could not be restored (their files stay unchecked in the checkpoint, so running again retries them):\n  {}",
            failed.len(),
            failed.iter().take(10).cloned().collect::<Vec<_>>().join("\n  ")
        );
    }
    Ok(())
}

/// Writes the checkpoint atomically (temporary file, rename), so a crash never leaves a
/// half-written one.
fn write_progress(path: &Path, progress: &Progress) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write_durable(&tmp, &serde_json::to_vec(progress)?)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

fn read_progress(path: &Path) -> anyhow::Result<Progress> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a restore checkpoint (delete it to start over)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Progress::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Waits for one restore; a key that failed for good is added to `failed` and the restore
/// goes on with the others.
async fn join_one(tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>, failed: &mut Vec<String>) {
    match tasks.join_next().await {
        Some(Ok(Ok(()))) | None => {}
        Some(Ok(Err(e))) => failed.push(format!("{e:#}")),
        Some(Err(e)) => failed.push(format!("a restore task failed: {e}")),
    }
}

/// One key, retried with backoff while the failure is worth retrying.
async fn restore_key(
    client: &Client,
    key: bytes::Bytes,
    object: dynakv_client::StoredObject,
    opts: Options,
) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(200);
    for attempt in 1..=TRIES {
        match client.restore(&key, object.clone(), opts).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() && attempt < TRIES => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("key {:?}", String::from_utf8_lossy(&key)))
            }
        }
    }
    Ok(())
}
