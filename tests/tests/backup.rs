//! Issue 13, part 3, on real processes: a full and an incremental backup of a live cluster,
//! the whole cluster wiped, both restored into a fresh cluster, every key read back; a
//! corrupted backup file is reported and nothing is restored from it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context as _};
use dynakv_client::{Client, Context, Options};
use dynakv_tests::Cluster;

/// What a key should read as after the restore: its sorted siblings (empty: deleted).
type Expected = BTreeMap<String, Vec<String>>;

fn run_ok(c: &Cluster, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    c.cli_json(args)
}

fn run_err(c: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let out = c.cli(args)?;
    if out.status.success() {
        bail!("dynakv {args:?} succeeded; expected a failure");
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

async fn read_all(client: &Client, expected: &Expected) -> anyhow::Result<()> {
    let all = Options {
        r: Some(3),
        ..Options::default()
    };
    for (key, want) in expected {
        let got = client.get_with(key.as_bytes(), all).await?;
        let mut values: Vec<String> = got
            .values
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        values.sort();
        assert_eq!(&values, want, "key {key}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_wipe_restore_incremental_and_a_corrupt_file() -> anyhow::Result<()> {
    let backups = tempfile::tempdir()?;
    let full = backups.path().join("full");
    let incr = backups.path().join("incr");
    let full_s = full.to_str().context("path")?;
    let incr_s = incr.to_str().context("path")?;
    let mut expected = Expected::new();

    {
        let c = Cluster::start(3)?;
        let client = Client::connect(&c.addrs(), &c.creds()?).await?;
        let w3 = Options {
            w: Some(3),
            ..Options::default()
        };
        for i in 0..200 {
            let (k, v) = (format!("key-{i}"), format!("v{i}"));
            client
                .put_with(k.as_bytes(), v.as_bytes(), &Context::empty(), w3)
                .await?;
            expected.insert(k, vec![v]);
        }
        // Two blind writes: siblings, which the backup must keep.
        client
            .put_with(b"key-7", b"other", &Context::empty(), w3)
            .await?;
        expected.insert("key-7".into(), vec!["other".into(), "v7".into()]);
        // A delete, which must stay a delete.
        let read = client.get(b"key-8").await?;
        client.delete_with(b"key-8", &read.context, w3).await?;
        expected.insert("key-8".into(), vec![]);

        let made = run_ok(&c, &["backup", "--out", full_s])?;
        assert_eq!(made["keys"], 200, "{made}");
        let full_id = made["id"].clone();
        let checked = run_ok(&c, &["backup", "verify", full_s])?;
        assert_eq!(checked["keys"], 200, "{checked}");

        // Changes after the full backup: 10 updates, 5 new keys, 1 delete.
        for i in 10..20 {
            let k = format!("key-{i}");
            let read = client.get(k.as_bytes()).await?;
            client
                .put_with(k.as_bytes(), b"updated", &read.context, w3)
                .await?;
            expected.insert(k, vec!["updated".into()]);
        }
        for i in 0..5 {
            let k = format!("new-{i}");
            client
                .put_with(k.as_bytes(), b"fresh", &Context::empty(), w3)
                .await?;
            expected.insert(k, vec!["fresh".into()]);
        }
        let read = client.get(b"key-30").await?;
        client.delete_with(b"key-30", &read.context, w3).await?;
        expected.insert("key-30".into(), vec![]);
        let made = run_ok(&c, &["backup", "--out", incr_s, "--since", full_s])?;
        assert_eq!(made["keys"], 16, "only what changed: {made}");
        assert_eq!(made["since"], full_id, "{made}");
        // Another backup into a directory that is not empty is refused.
        let refused = run_err(&c, &["backup", "--out", full_s])?;
        assert!(refused.contains("not empty"), "{refused}");
        client.close().await;
    } // the whole cluster is stopped and its directory deleted

    // A fresh cluster (new CA, new nodes, nothing stored): restore the incremental backup,
    // which brings its whole chain.
    let c = Cluster::start(3)?;
    let restored = run_ok(&c, &["restore", incr_s])?;
    assert_eq!(restored["backups_in_chain"], 2, "{restored}");
    assert_eq!(restored["keys"], 216, "{restored}");
    let client = Client::connect(&c.addrs(), &c.creds()?).await?;
    read_all(&client, &expected).await?;

    // Run again: the checkpoint skips everything; merging is idempotent anyway.
    let again = run_ok(&c, &["restore", incr_s])?;
    assert_eq!(again["skipped_from_checkpoint"], 216, "{again}");

    // A restore never undoes a newer write: write over a restored key, restore again from
    // scratch (a new checkpoint file), the newer value stays.
    let read = client.get(b"key-1").await?;
    client.put(b"key-1", b"newest", &read.context).await?;
    let fresh = backups.path().join("fresh-checkpoint.json");
    run_ok(
        &c,
        &[
            "restore",
            full_s,
            "--checkpoint",
            fresh.to_str().context("path")?,
        ],
    )?;
    expected.insert("key-1".into(), vec!["newest".into()]);
    read_all(&client, &expected).await?;

    // One flipped byte in one file: verify names it, and restore refuses before sending.
    corrupt_one_file(&full)?;
    let err = run_err(&c, &["backup", "verify", incr_s])?;
    assert!(err.contains("damaged") && err.contains(".dkvb"), "{err}");
    let other = backups.path().join("other-checkpoint.json");
    let err = run_err(
        &c,
        &[
            "restore",
            full_s,
            "--checkpoint",
            other.to_str().context("path")?,
        ],
    )?;
    assert!(err.contains("damaged"), "{err}");
    assert!(!other.exists(), "nothing was restored");
    client.close().await;
    Ok(())
}

/// Flips one byte in the middle of the largest partition file of the backup in `dir`.
fn corrupt_one_file(dir: &Path) -> anyhow::Result<()> {
    let mut largest = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "dkvb") {
            let len = std::fs::metadata(&path)?.len();
            if largest.as_ref().is_none_or(|(l, _)| len > *l) {
                largest = Some((len, path));
            }
        }
    }
    let (_, path) = largest.context("no partition file")?;
    let mut bytes = std::fs::read(&path)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&path, bytes)?;
    Ok(())
}
