//! Settings from the environment: [`NODES_ENV`] (`DYNAKV_NODES`), [`CA_ENV`] (`DYNAKV_CA`),
//! [`CERT_ENV`] (`DYNAKV_CERT`) and [`KEY_ENV`] (`DYNAKV_KEY`), the variables the `dynakv` CLI
//! reads, with the same defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::{Client, ClientError, Credentials};

/// The variable naming the nodes to talk to: comma-separated `host:port` addresses (IP
/// literals), tried in order. `dynakv dev` prints an `export` line that sets it.
pub const NODES_ENV: &str = "DYNAKV_NODES";
/// The variable naming the cluster CA certificate file (PEM).
pub const CA_ENV: &str = "DYNAKV_CA";
/// The nodes used when [`NODES_ENV`] is not set: node 1 of a default `dynakv dev` cluster.
pub const DEFAULT_NODES: &str = "127.0.0.1:7101";
/// The CA used when [`CA_ENV`] is not set: that of a `dynakv dev` cluster in the current
/// directory.
pub const DEFAULT_CA: &str = "./dynakv-dev/ca.pem";
/// The variable naming this client's certificate file (PEM, from `dynakv ca issue-client`).
pub const CERT_ENV: &str = "DYNAKV_CERT";
/// The variable naming this client's private key file (PEM).
pub const KEY_ENV: &str = "DYNAKV_KEY";
/// The certificate used when [`CERT_ENV`] is not set: the admin client of a `dynakv dev`
/// cluster in the current directory.
pub const DEFAULT_CERT: &str = "./dynakv-dev/admin.pem";
/// The key used when [`KEY_ENV`] is not set (see [`DEFAULT_CERT`]).
pub const DEFAULT_KEY: &str = "./dynakv-dev/admin-key.pem";

impl Client {
    /// Connects like [`Client::connect`], with the seeds from `DYNAKV_NODES` (default
    /// [`DEFAULT_NODES`]), the CA certificate from the file `DYNAKV_CA` names (default
    /// [`DEFAULT_CA`]), and the client certificate and key from `DYNAKV_CERT` and `DYNAKV_KEY`
    /// (defaults [`DEFAULT_CERT`], [`DEFAULT_KEY`]).
    ///
    /// Errors: [`ClientError::Config`] when the list is empty or holds something that is not
    /// a socket address, or a file cannot be read; then whatever [`Client::connect`] reports.
    pub async fn from_env() -> Result<Client, ClientError> {
        let nodes = match std::env::var(NODES_ENV) {
            Ok(list) => parse_nodes(&list)?,
            Err(std::env::VarError::NotPresent) => parse_nodes(DEFAULT_NODES)?,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ClientError::Config(format!(
                    "{NODES_ENV} is not valid UTF-8"
                )))
            }
        };
        let path = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let creds = Credentials::from_files(
            &path(CA_ENV, DEFAULT_CA),
            &path(CERT_ENV, DEFAULT_CERT),
            &path(KEY_ENV, DEFAULT_KEY),
        )?;
        Client::connect(&nodes, &creds).await
    }
}

/// Parses a comma-separated address list (`DYNAKV_NODES` syntax: blanks around entries are
/// ignored, an empty list is an error).
fn parse_nodes(list: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addr = part.parse().map_err(|_| {
            ClientError::Config(format!(
                "bad address {part:?} in {NODES_ENV} (expected comma-separated IP:PORT)"
            ))
        })?;
        out.push(addr);
    }
    if out.is_empty() {
        return Err(ClientError::Config(format!("{NODES_ENV} is empty")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_parse_in_order_and_bad_ones_are_config_errors() {
        let nodes = parse_nodes(" 127.0.0.1:1, [::1]:2,,").ok();
        let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, 2).into();
        let want = vec![SocketAddr::from(([127, 0, 0, 1], 1)), v6];
        assert_eq!(nodes, Some(want));
        assert!(matches!(parse_nodes(" , "), Err(ClientError::Config(_))));
        assert!(matches!(
            parse_nodes("localhost:7101"),
            Err(ClientError::Config(m)) if m.contains("\"localhost:7101\"")
        ));
    }
}
