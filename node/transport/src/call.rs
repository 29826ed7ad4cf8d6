//! One request/reply exchange on a fresh bidirectional stream: the client half of the request
//! protocol, shared by the `dynakv-client` crate (and so the CLI) and the node's join path.

use std::time::Duration;

use dynakv_proto::wire::{decode, encode, ClientFrame, ServerFrame, MAX_REPLY_FRAME};

use crate::error::{Error, Result};
use crate::frame::{read_frame, write_frame};

/// Sends `frame` on a new bidirectional stream of `conn` and waits at most `wait` for the reply.
///
/// Errors: [`Error::Transport`] when the stream cannot be opened or breaks (the node is
/// unreachable or went away), [`Error::Proto`] for a reply that is not a [`ServerFrame`], and
/// [`Error::Transport`] with "timed out" when no reply came in time.
pub async fn call(
    conn: &quinn::Connection,
    frame: &ClientFrame,
    wait: Duration,
) -> Result<ServerFrame> {
    let payload = encode(frame)?;
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| Error::Transport(format!("opening a stream: {e}")))?;
        write_frame(&mut send, &payload).await?;
        // Finishing tells the node the request is complete; an error means the stream is gone,
        // which the read below reports better.
        let _ = send.finish();
        match read_frame(&mut recv, MAX_REPLY_FRAME).await? {
            Some(reply) => Ok(decode::<ServerFrame>(&reply)?),
            None => Err(Error::Transport(
                "the node closed the stream without replying".into(),
            )),
        }
    };
    match tokio::time::timeout(wait, exchange).await {
        // A node that refused our certificate closes the connection right after the
        // handshake: report that rather than a broken stream.
        Ok(Err(e)) => Err(match conn.close_reason() {
            Some(reason) => crate::endpoint::certificate_refusal(&reason).unwrap_or_else(|| {
                match reason {
                    // The node said why (too many connections, removed, ...): pass it on.
                    quinn::ConnectionError::ApplicationClosed(a) => Error::Transport(format!(
                        "the node closed the connection: {}",
                        String::from_utf8_lossy(&a.reason)
                    )),
                    _ => e,
                }
            }),
            None => e,
        }),
        Ok(result) => result,
        Err(_) => Err(Error::Transport(format!(
            "timed out after {} ms waiting for the reply",
            wait.as_millis()
        ))),
    }
}
