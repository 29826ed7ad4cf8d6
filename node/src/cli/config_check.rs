//! `dynakv config check`: what `dynakv node` would start with (flags, `DYNAKV_<KEY>`
//! variables and `dynakv.toml` merged, host names resolved) and whether it can start: the data
//! directory and its certificate, the cluster file, the limits. Also builds the options of
//! `dynakv node` itself, so the two never disagree.

use anyhow::{bail, Context as _};
use dynakv_server::config::{ClusterFile, DataDir};
use dynakv_server::settings::{self, NodeFlags};
use dynakv_server::NodeOptions;
use dynakv_transport::NodeCert;

use super::NodeArgs;

/// The options `dynakv node ARGS` starts with.
pub async fn node_options(args: &NodeArgs) -> anyhow::Result<NodeOptions> {
    // Variables that are not UTF-8 cannot be settings (and `std::env::vars` would panic).
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let file = settings::load(args.config.as_deref(), env)?;
    let flags = NodeFlags {
        id: args.id,
        listen: args.listen,
        advertise: args.advertise.clone(),
        dir: args.dir.clone(),
        join: args.join.clone(),
        cluster: args.cluster.clone(),
        metrics_addr: args.metrics_addr,
        http_addr: args.http_addr,
        insecure_key_permissions: args.insecure_key_permissions,
    };
    Ok(settings::node_options(flags, file).await?)
}

/// `dynakv config check`: one JSON line with the effective settings, or the first problem.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let opts = node_options(&args).await?;
    let dir = DataDir::new(&opts.dir);
    dir.check()?;
    let cert = NodeCert::load(dir.root(), opts.insecure_key_permissions)?;
    if cert.node_id() != Some(opts.id) {
        bail!(
            "the certificate in {} is for node {:?}, not node {}",
            dir.root().display(),
            cert.node_id().map(|n| n.0),
            opts.id
        );
    }
    let cluster_path = opts.cluster.clone().unwrap_or_else(|| dir.cluster_file());
    let cluster = if opts.cluster.is_some() || cluster_path.exists() {
        Some(ClusterFile::load(&cluster_path)?)
    } else {
        None
    };
    let founder = cluster
        .as_ref()
        .is_some_and(|c| c.members.iter().any(|m| m.id == opts.id.0));
    let entry = if founder {
        format!("founder (listed in {})", cluster_path.display())
    } else if dir.root().join("join.toml").exists() {
        "rejoins the cluster it joined before (join.toml)".to_string()
    } else if !opts.join.is_empty() {
        format!("joins through {:?}", opts.join)
    } else {
        "waits for `dynakv join SEED --node ADDR`".to_string()
    };
    let advertised = opts.advertise.unwrap_or(opts.listen);
    if !founder && advertised.ip().is_unspecified() {
        bail!("this node would advertise {advertised}, which no peer can dial: set `advertise` (or --advertise) to the address peers reach it at");
    }
    // The limits, checked as the node checks them (with the cluster file's quorum, or the
    // defaults of a joining node).
    let quorum = cluster
        .clone()
        .unwrap_or_else(|| ClusterFile::new(Vec::new()));
    opts.settings
        .core_config(opts.id, &quorum)
        .context("the limits and timers")?;
    println!(
        "{}",
        serde_json::json!({
            "ok": true,
            "id": opts.id.0,
            "listen": opts.listen.to_string(),
            "advertise": opts.advertise.unwrap_or(opts.listen).to_string(),
            "dir": opts.dir.display().to_string(),
            "entry": entry,
            "metrics_addr": opts.metrics_addr.map(|a| a.to_string()),
            "http_addr": opts.http_addr.map(|a| a.to_string()),
            "cache_mb": opts.settings.cache_bytes() >> 20,
        })
    );
    Ok(())
}
