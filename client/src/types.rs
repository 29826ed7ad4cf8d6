//! The values the client takes and hands out: [`Context`], [`Object`], [`Options`], and
//! [`Answered`] (a reply with the node that sent it).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dynakv_proto::codec::token::{context_from_token, context_to_token};
use dynakv_proto::dvv::{NodeClock, VersionVector};
use dynakv_proto::RequestOptions;

use crate::{ClientError, DEFAULT_WAIT, REPLY_GRACE};

/// The causal context of a read: write back with it to replace what was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context(NodeClock);

impl Context {
    /// The empty context: a write with it is blind (it becomes a sibling of what is stored).
    pub fn empty() -> Context {
        Context::default()
    }

    /// The opaque text form (what the CLI prints and takes).
    pub fn to_token(&self) -> String {
        context_to_token(&self.0)
    }

    /// Parses a token from [`Context::to_token`] or the CLI; a token that does not decode is
    /// [`ClientError::MalformedContext`].
    pub fn from_token(token: &str) -> Result<Context, ClientError> {
        context_from_token(token).map(Context).map_err(|e| {
            ClientError::MalformedContext(match e {
                dynakv_proto::Error::MalformedContext(why) => why,
                other => other.to_string(),
            })
        })
    }

    /// The dots it has seen, per actor (a [`NodeClock`]: a base and, rarely, ranges above it).
    pub fn clock(&self) -> &NodeClock {
        &self.0
    }
}

/// Wraps the context of a full reply ([`GetReply`](crate::GetReply),
/// [`PutReply`](crate::PutReply)), e.g. to print it with [`Context::to_token`].
impl From<NodeClock> for Context {
    fn from(clock: NodeClock) -> Context {
        Context(clock)
    }
}

/// A context that has seen, per actor, every dot up to the vector's counter.
impl From<&VersionVector> for Context {
    fn from(vv: &VersionVector) -> Context {
        Context(NodeClock::from_vector(vv))
    }
}

/// What a get returns: every live sibling and the context covering them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The siblings (empty when the key is missing or deleted).
    pub values: Vec<Bytes>,
    /// The causal context.
    pub context: Context,
}

/// Per-request overrides of the cluster defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Replicas per key.
    pub n: Option<u8>,
    /// Read quorum.
    pub r: Option<u8>,
    /// Write quorum.
    pub w: Option<u8>,
    /// Replies a get needs from primary replicas (PR, at most R); fallbacks do not count.
    pub pr: Option<u8>,
    /// Acknowledgements a put or delete needs from primary replicas (PW, at most W); the write
    /// fails with [`RequestError::PrimariesUnavailable`](crate::RequestError) rather than rely
    /// on fallbacks.
    pub pw: Option<u8>,
    /// Request timeout (whole milliseconds are sent).
    pub timeout: Option<Duration>,
}

impl Options {
    /// The options as they go on the wire.
    pub(crate) fn request(&self) -> RequestOptions {
        RequestOptions {
            n: self.n,
            r: self.r,
            w: self.w,
            pr: self.pr,
            pw: self.pw,
            timeout_ms: self
                .timeout
                .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
        }
    }

    /// How long to wait for the coordinator's reply: the request timeout plus a grace period,
    /// or [`DEFAULT_WAIT`] when the cluster default applies.
    pub(crate) fn wait(&self) -> Duration {
        self.timeout
            .map(|t| t + REPLY_GRACE)
            .unwrap_or(DEFAULT_WAIT)
    }
}

/// A node's full reply together with the address of the node that sent it. For a get, put or
/// delete that node coordinated the request; for a node-level request (admin, join) it is the
/// node the request acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered<T> {
    /// The node that answered.
    pub node: SocketAddr,
    /// What it answered.
    pub reply: T,
}
