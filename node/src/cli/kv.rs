//! `dynakv put`, `get` and `delete`: one request through the client, one line of output.

use std::time::Duration;

use anyhow::anyhow;
use dynakv_client::{Context, Options, PutReply};
use dynakv_proto::json::{GetJson, WriteJson};

use super::{DeleteArgs, GetArgs, PutArgs, QuorumArgs};

fn parse_context(token: Option<&str>) -> anyhow::Result<Context> {
    match token {
        None => Ok(Context::empty()),
        Some(t) => Context::from_token(t).map_err(|e| anyhow!("--context: {e}")),
    }
}

/// Which quorum a command asks for: (R, PR) for a get, (W, PW) for a write.
enum Quorum {
    Read { r: Option<u8>, pr: Option<u8> },
    Write { w: Option<u8>, pw: Option<u8> },
}

fn options(q: QuorumArgs, quorum: Quorum) -> Options {
    let (r, pr, w, pw) = match quorum {
        Quorum::Read { r, pr } => (r, pr, None, None),
        Quorum::Write { w, pw } => (None, None, w, pw),
    };
    Options {
        n: q.n,
        r,
        w,
        pr,
        pw,
        timeout: q.timeout.map(|ms| Duration::from_millis(u64::from(ms))),
    }
}

fn print_written(key: &str, w: PutReply) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string(&WriteJson::new(key.as_bytes(), &w))?
    );
    Ok(())
}

/// `dynakv put`.
pub async fn put(args: PutArgs) -> anyhow::Result<()> {
    let context = parse_context(args.context.as_deref())?;
    let client = args.target.client()?;
    let opts = options(
        args.quorum,
        Quorum::Write {
            w: args.w,
            pw: args.pw,
        },
    );
    let reply = client
        .put_detailed(args.key.as_bytes(), args.value.as_bytes(), &context, opts)
        .await;
    client.close().await;
    print_written(&args.key, reply?.reply)
}

/// `dynakv delete`.
pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let context = parse_context(args.context.as_deref())?;
    let client = args.target.client()?;
    let opts = options(
        args.quorum,
        Quorum::Write {
            w: args.w,
            pw: args.pw,
        },
    );
    let reply = client
        .delete_detailed(args.key.as_bytes(), &context, opts)
        .await;
    client.close().await;
    print_written(&args.key, reply?.reply)
}

/// `dynakv get`.
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let opts = options(
        args.quorum,
        Quorum::Read {
            r: args.r,
            pr: args.pr,
        },
    );
    let reply = client.get_detailed(args.key.as_bytes(), opts).await;
    client.close().await;
    let got = reply?.reply;
    let line = GetJson::new(args.key.as_bytes(), &got.values, &got.context);
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}
