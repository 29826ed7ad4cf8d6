//! Where the CLI sends a request, how it trusts the node and proves who it is: the `--node`,
//! `--ca`, `--cert` and `--key` flags (and their variables `DYNAKV_NODES`, `DYNAKV_CA`,
//! `DYNAKV_CERT` and `DYNAKV_KEY`), which build a [`Client`]. Every client
//! call of the CLI goes through `dynakv-client`: one connection code path, one set of timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use dynakv_client::{
    Client, Credentials, CA_ENV, CERT_ENV, DEFAULT_CA, DEFAULT_CERT, DEFAULT_KEY, DEFAULT_NODES,
    KEY_ENV, NODES_ENV,
};

/// `--node` and `--ca`, shared by every command that talks to a node.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// Node to send the request to; it coordinates the request (or is the node a `join`,
    /// `leave` or `status` is about). A comma-separated list (env DYNAKV_NODES) is tried in
    /// order until a node answers.
    #[arg(
        long = "node",
        value_name = "ADDR",
        env = NODES_ENV,
        value_delimiter = ',',
        default_value = DEFAULT_NODES,
        value_parser = parse_addr,
    )]
    pub nodes: Vec<SocketAddr>,
    /// CA certificate (PEM) to verify nodes with.
    #[arg(long = "ca", value_name = "FILE", env = CA_ENV, default_value = DEFAULT_CA)]
    pub ca: PathBuf,
    /// This client's certificate (PEM, from `dynakv ca issue-client`); its role decides what
    /// the nodes let it do.
    #[arg(id = "client_cert", long = "cert", value_name = "FILE", env = CERT_ENV, default_value = DEFAULT_CERT)]
    pub cert_file: PathBuf,
    /// This client's private key (PEM).
    #[arg(id = "client_key", long = "key", value_name = "FILE", env = KEY_ENV, default_value = DEFAULT_KEY)]
    pub key_file: PathBuf,
}

/// One `IP:PORT` of `--node`/`DYNAKV_NODES` (blanks around it are ignored).
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an IP:PORT address"))
}

impl Target {
    /// The CA certificate and this client's certificate and key.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        if !self.ca.exists() {
            anyhow::bail!(
                "cannot read the CA certificate {} (pass --ca FILE or set {CA_ENV})",
                self.ca.display()
            );
        }
        Ok(Credentials::from_files(
            &self.ca,
            &self.cert_file,
            &self.key_file,
        )?)
    }

    /// A client that sends each request to the first of the nodes that answers, which
    /// coordinates it. Dials lazily, on the first request.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::direct_many(&self.nodes, &self.credentials()?)?)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        target: Target,
    }

    #[test]
    fn node_lists_parse_in_order_and_help_names_the_variables() {
        let cli = Cli::try_parse_from(["t", "--node", "127.0.0.1:1, 127.0.0.1:2", "--ca", "c"]);
        let nodes = cli.map(|c| c.target.nodes).unwrap_or_default();
        let want: Vec<SocketAddr> = vec![([127, 0, 0, 1], 1).into(), ([127, 0, 0, 1], 2).into()];
        assert_eq!(nodes, want);
        assert!(Cli::try_parse_from(["t", "--node", "localhost"]).is_err());
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(
            ["DYNAKV_NODES", "DYNAKV_CA", "DYNAKV_CERT", "DYNAKV_KEY"]
                .iter()
                .all(|v| help.contains(v)),
            "{help}"
        );
    }
}
