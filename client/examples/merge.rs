//! Read a key's siblings, merge them, and write the merge back.
//!
//! Start a cluster (`dynakv dev`), copy its `export DYNAKV_NODES=... DYNAKV_CA=...` line, then:
//! `cargo run -p dynakv-client --example merge -- cart`.
//! The example first makes two concurrent blind writes (two siblings), then merges them as the
//! union of their comma-separated items and writes the union back with the context it read, which
//! replaces both siblings.

use std::collections::BTreeSet;

use dynakv_client::{Client, Context};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let key = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "cart".to_string());
    // DYNAKV_NODES and DYNAKV_CA, with the defaults of the CLI.
    let client = Client::from_env().await?;

    // Two writers that did not see each other: both survive as siblings.
    client
        .put(key.as_bytes(), b"apples,bread", &Context::empty())
        .await?;
    client
        .put(key.as_bytes(), b"bread,coffee", &Context::empty())
        .await?;

    let object = client.get(key.as_bytes()).await?;
    println!("siblings: {:?}", object.values);
    let merged: BTreeSet<String> = object
        .values
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    let merged = merged.into_iter().collect::<Vec<_>>().join(",");
    client
        .put(key.as_bytes(), merged.as_bytes(), &object.context)
        .await?;

    let after = client.get(key.as_bytes()).await?;
    println!("after merge: {:?}", after.values);
    Ok(())
}
