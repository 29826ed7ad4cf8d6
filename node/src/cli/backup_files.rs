//! A backup directory on disk: the manifest (`manifest.json`), one file per partition
//! (`p-00042.dkvb`, the format of `dynakv_proto::codec::backup`), the chain of incremental
//! backups, and checking all of it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use dynakv_proto::codec::backup::decode_backup_file;
use dynakv_proto::Object;
use serde::{Deserialize, Serialize};

/// The manifest's file name; it is written last, so a directory without it is no backup.
pub const MANIFEST: &str = "manifest.json";
/// The manifest format this dynakv writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// Longest chain of incremental backups followed (a loop in `since` links is an error).
const MAX_CHAIN: usize = 1000;

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// This backup's id (16 hex digits), which an incremental backup taken on top names.
    pub id: String,
    /// When the backup finished (ms since the Unix epoch).
    pub created_unix_ms: u64,
    /// For an incremental backup: the backup it adds to.
    pub since: Option<Since>,
    /// The cluster's partition count (Q) and replicas per key (N) at backup time.
    pub partitions: u16,
    pub n: u8,
    /// Keys in the files of this backup (for an incremental one: the keys that changed).
    pub keys: u64,
    /// One entry per partition.
    pub files: Vec<FileEntry>,
}

/// The backup an incremental backup adds to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    /// Its id.
    pub id: String,
    /// Its directory (absolute).
    pub dir: PathBuf,
}

/// One partition's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub partition: u16,
    /// The file name, inside the backup directory.
    pub file: String,
    pub keys: u64,
    pub bytes: u64,
    /// xxh3-64 of the whole file, 16 hex digits.
    pub xxh3: String,
}

/// The file name of partition `p`.
pub fn file_name(p: u16) -> String {
    format!("p-{p:05}.dkvb")
}

/// xxh3-64 as 16 hex digits.
pub fn hex(sum: u64) -> String {
    format!("{sum:016x}")
}

/// A progress line on stderr, redrawn in place, on a terminal only (a log or a pipe gets
/// the final JSON line alone).
pub fn progress(line: &str) {
    let stderr = std::io::stderr();
    if std::io::IsTerminal::is_terminal(&stderr) {
        eprint!("\r{line}");
    }
}

/// Ends the progress line on a terminal.
pub fn progress_done() {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
}

/// Writes `bytes` to `path` and makes it durable (fsync of the file).
pub fn write_durable(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the manifest last and atomically (temporary file, fsync, rename, fsync of the
/// directory): until it exists, the directory is not a backup.
pub fn write_manifest(dir: &Path, m: &Manifest) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    write_durable(&tmp, &serde_json::to_vec_pretty(m)?)?;
    std::fs::rename(&tmp, dir.join(MANIFEST))
        .with_context(|| format!("cannot finish the manifest in {}", dir.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Reads a backup's manifest.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "{} is not a dynakv backup (no {MANIFEST}; an interrupted backup has none)",
            dir.display()
        )
    })?;
    let m: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a valid backup manifest", path.display()))?;
    if m.format != MANIFEST_FORMAT {
        bail!(
            "{}: manifest format {} (this dynakv reads format {MANIFEST_FORMAT})",
            path.display(),
            m.format
        );
    }
    Ok(m)
}

/// The backup in `dir` and every backup it adds to, oldest first. Each `since` link must lead
/// to the backup it names.
pub fn chain(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Manifest)>> {
    let mut out = Vec::new();
    let mut next = Some((dir.to_path_buf(), None::<String>));
    while let Some((d, want_id)) = next.take() {
        if out.len() >= MAX_CHAIN {
            bail!("more than {MAX_CHAIN} incremental backups in a chain (a loop?)");
        }
        let m = read_manifest(&d)?;
        if let Some(want) = want_id {
            if m.id != want {
                bail!(
                    "{} holds backup {}, but the backup on top of it was taken against {want}",
                    d.display(),
                    m.id
                );
            }
        }
        next = m
            .since
            .as_ref()
            .map(|s| (s.dir.clone(), Some(s.id.clone())));
        out.push((d, m));
    }
    out.reverse();
    Ok(out)
}

/// Reads one partition file and checks it against its manifest entry: size, whole-file
/// checksum, every record's checksum, the partition number and the key count.
pub fn read_checked(dir: &Path, entry: &FileEntry) -> anyhow::Result<Vec<(Bytes, Object)>> {
    let path = dir.join(&entry.file);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 != entry.bytes {
        bail!(
            "{}: {} bytes, the manifest says {}",
            path.display(),
            bytes.len(),
            entry.bytes
        );
    }
    let sum = hex(xxhash_rust::xxh3::xxh3_64(&bytes));
    if sum != entry.xxh3 {
        bail!(
            "{}: checksum {sum}, the manifest says {}",
            path.display(),
            entry.xxh3
        );
    }
    let (p, items) = decode_backup_file(&bytes).with_context(|| format!("{}", path.display()))?;
    if p != entry.partition || items.len() as u64 != entry.keys {
        bail!(
            "{}: partition {p} with {} keys, the manifest says partition {} with {}",
            path.display(),
            items.len(),
            entry.partition,
            entry.keys
        );
    }
    Ok(items)
}

/// Checks every file of the backup in `dir` (not the backups under it); returns the number of
/// keys, or every problem found.
pub fn verify(dir: &Path, m: &Manifest) -> anyhow::Result<u64> {
    let mut problems = Vec::new();
    let mut keys = 0;
    for entry in &m.files {
        match read_checked(dir, entry) {
            Ok(items) => keys += items.len() as u64,
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        bail!(
            "backup {} is damaged ({} of {} files):\n  {}",
            dir.display(),
            problems.len(),
            m.files.len(),
            problems.join("\n  ")
        );
    }
    Ok(keys)
}

/// What a chain of backups holds, per key: the hash of the merged object (for an incremental
/// backup, which writes only keys whose merged object changed).
pub fn chain_hashes(dir: &Path) -> anyhow::Result<BTreeMap<Bytes, u64>> {
    let mut merged: BTreeMap<Bytes, Object> = BTreeMap::new();
    for (d, m) in chain(dir)? {
        for entry in &m.files {
            for (k, o) in read_checked(&d, entry)? {
                let next = match merged.get(&k) {
                    Some(old) => old.sync(&o),
                    None => o,
                };
                merged.insert(k, next);
            }
        }
    }
    merged
        .into_iter()
        .map(|(k, o)| Ok((k, object_hash(&o)?)))
        .collect()
}

/// The hash that decides whether a key changed since an earlier backup.
pub fn object_hash(o: &Object) -> anyhow::Result<u64> {
    Ok(xxhash_rust::xxh3::xxh3_64(&dynakv_proto::codec::encode(o)?))
}
