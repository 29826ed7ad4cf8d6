//! `dynakv put`, `get` and `delete`: one request through the client, one line of output.

use std::time::Duration;

use anyhow::anyhow;
use base64::Engine as _;
use dynakv_client::{Context, Options, PutReply};

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

/// The output line of `put` and `delete`, fields in the documented order (context first).
#[derive(serde::Serialize)]
struct WriteLine {
    context: String,
    acks: u8,
    primary_acks: u8,
    fallback_acks: u8,
}

fn print_written(w: PutReply) -> anyhow::Result<()> {
    let line = WriteLine {
        context: Context::from(w.context).to_token(),
        acks: w.acks,
        primary_acks: w.primary_acks,
        fallback_acks: w.fallback_acks,
    };
    println!("{}", serde_json::to_string(&line)?);
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
    print_written(reply?.reply)
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
    print_written(reply?.reply)
}

/// The output line of `get`, fields in the documented order.
#[derive(serde::Serialize)]
struct GetLine<'a> {
    key: &'a str,
    siblings: Vec<String>,
    /// Present (as "base64") only when some value is not UTF-8; then every sibling is base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    context: String,
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
    let texts: Option<Vec<&str>> = got
        .values
        .iter()
        .map(|v| std::str::from_utf8(v).ok())
        .collect();
    let (siblings, encoding) = match texts {
        Some(texts) => (texts.into_iter().map(str::to_string).collect(), None),
        None => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let encoded = got.values.iter().map(|v| b64.encode(v)).collect();
            (encoded, Some("base64"))
        }
    };
    let line = GetLine {
        key: &args.key,
        siblings,
        encoding,
        context: Context::from(got.context).to_token(),
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}
