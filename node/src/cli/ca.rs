//! `dynakv ca init`, `dynakv ca issue` and `dynakv ca issue-client`: the cluster CA, node
//! certificates and client certificates. `dynakv dev` uses the same functions.

use std::path::Path;

use anyhow::{bail, Context as _};
use dynakv_ring::NodeId;
use dynakv_transport::{ClusterCa, Role};

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
        CaCommand::IssueClient {
            name,
            role,
            dir,
            out,
        } => {
            let ca = ClusterCa::load(&dir)?;
            let role: Role = role.parse()?;
            let (cert, key) = issue_client(&ca, &name, role, &out)?;
            println!(
                "issued client {name:?} with the {role} role: {} and {}; use it with \
                 `export DYNAKV_CERT={} DYNAKV_KEY={}`",
                cert.display(),
                key.display(),
                cert.display(),
                key.display()
            );
            Ok(())
        }
    }
}

/// Issues a client certificate into `out` as NAME.pem and NAME-key.pem; returns both paths.
pub fn issue_client(
    ca: &ClusterCa,
    name: &str,
    role: Role,
    out: &Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = ca.issue_client(name, role)?;
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}-key.pem"));
    cert.save(&cert_path, &key_path)?;
    Ok((cert_path, key_path))
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
