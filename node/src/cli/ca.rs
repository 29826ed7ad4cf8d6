//! `dynakv ca init` and `dynakv ca issue`: the cluster CA and node certificates. `dynakv dev`
//! uses the same functions.

use std::path::Path;

use anyhow::{bail, Context as _};
use dynakv_ring::NodeId;
use dynakv_transport::ClusterCa;

use super::CaCommand;

/// Runs a `ca` subcommand.
pub fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init { dir } => {
            init(&dir)?;
            println!(
                "created {}/ca.pem and {}/ca-key.pem (keep ca-key.pem private)",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        CaCommand::Issue { id, dir, out } => {
            let ca = ClusterCa::load(&dir)?;
            issue(&ca, NodeId(id), &out)?;
            println!(
                "issued node {id}: {}/node.pem, node-key.pem, ca.pem; start it with `dynakv node --id {id} --dir {} --listen ADDR`",
                out.display(),
                out.display()
            );
            Ok(())
        }
    }
}

/// Creates a CA in `dir`; refuses to replace an existing one (that would orphan every node).
pub fn init(dir: &Path) -> anyhow::Result<ClusterCa> {
    if dir.join("ca.pem").exists() || dir.join("ca-key.pem").exists() {
        bail!(
            "{} already holds a CA; refusing to overwrite it",
            dir.display()
        );
    }
    let ca = ClusterCa::generate()?;
    ca.save(dir)?;
    Ok(ca)
}

/// Issues node `id`'s certificate into `out` together with a copy of the CA certificate.
pub fn issue(ca: &ClusterCa, id: NodeId, out: &Path) -> anyhow::Result<()> {
    let cert = ca.issue_node(id)?;
    cert.save(out)?;
    let ca_copy = out.join("ca.pem");
    std::fs::write(&ca_copy, ca.cert_pem())
        .with_context(|| format!("cannot write {}", ca_copy.display()))?;
    Ok(())
}
