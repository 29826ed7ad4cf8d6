//! The values the client takes and hands out: [`Context`], [`Object`], [`Options`], and
//! [`Answered`] (a reply with the node that sent it).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dynakv_proto::codec::token::{
    check_binding, context_to_token, hash_bound_context_to_token, key_hash,
    keyed_context_from_token,
};
use dynakv_proto::dvv::{NodeClock, VersionVector};
use dynakv_proto::RequestOptions;

use crate::{ClientError, DEFAULT_WAIT, REPLY_GRACE};

/// The causal context of a read: write back with it to replace what was read.
///
/// A context from a read or write of a key is *bound* to that key: writing another key with it
/// is refused ([`ClientError::MalformedContext`]), because it would supersede that key's values
/// that share dots with it, which the caller never saw. Contexts built from a clock
/// ([`From<NodeClock>`]) are unbound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    clock: NodeClock,
    /// xxh3-64 of the key it came from, when it came from one.
    key: Option<u64>,
}

impl Context {
    /// The empty context: a write with it is blind (it becomes a sibling of what is stored).
    pub fn empty() -> Context {
        Context::default()
    }

    /// The context `clock` of `key`, as a read or write of that key returns it.
    pub fn bound(key: &[u8], clock: NodeClock) -> Context {
        Context {
            clock,
            key: Some(key_hash(key)),
        }
    }

    /// The opaque text form (what the CLI prints and takes); it carries the binding.
    pub fn to_token(&self) -> String {
        match self.key {
            Some(h) => hash_bound_context_to_token(h, &self.clock),
            None => context_to_token(&self.clock),
        }
    }

    /// Parses a token from [`Context::to_token`], the CLI or the HTTP API (bound or not); a
    /// token that does not decode is [`ClientError::MalformedContext`].
    pub fn from_token(token: &str) -> Result<Context, ClientError> {
        keyed_context_from_token(token)
            .map(|(clock, key)| Context { clock, key })
            .map_err(malformed)
    }

    /// The dots it has seen, per actor (a [`NodeClock`]: a base and, rarely, ranges above it).
    pub fn clock(&self) -> &NodeClock {
        &self.clock
    }

    /// Refuses to send this context with a write of `key` when it is bound to another key.
    pub(crate) fn check_for(&self, key: &[u8]) -> Result<(), ClientError> {
        check_binding(key, self.key).map_err(malformed)
    }
}

fn malformed(e: dynakv_proto::Error) -> ClientError {
    ClientError::MalformedContext(match e {
        dynakv_proto::Error::MalformedContext(why) => why,
        other => other.to_string(),
    })
}

/// Wraps a bare clock, unbound: usable with any key, so a mix-up goes unnoticed. For the context
/// of a full reply ([`GetReply`](crate::GetReply), [`PutReply`](crate::PutReply)) prefer
/// [`Context::bound`] with the key it was read from.
impl From<NodeClock> for Context {
    fn from(clock: NodeClock) -> Context {
        Context { clock, key: None }
    }
}

/// A context that has seen, per actor, every dot up to the vector's counter (unbound).
impl From<&VersionVector> for Context {
    fn from(vv: &VersionVector) -> Context {
        Context::from(NodeClock::from_vector(vv))
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

#[cfg(test)]
mod tests {
    use super::*;
    use dynakv_proto::dvv::{Actor, Dot};
    use dynakv_ring::NodeId;

    #[test]
    fn a_bound_context_keeps_its_key_through_a_token_and_refuses_others() {
        let mut clock = NodeClock::new();
        clock.add(&Dot::new(Actor::new(NodeId(1), 9), 1));
        let ctx = Context::bound(b"k", clock.clone());
        let again = Context::from_token(&ctx.to_token()).expect("decodes");
        assert_eq!(again, ctx);
        assert!(again.check_for(b"k").is_ok());
        let refused = again.check_for(b"j").expect_err("another key");
        assert!(matches!(&refused, ClientError::MalformedContext(m) if m.contains("another key")));
        // Built from a bare clock: unbound, usable with any key.
        let bare = Context::from(clock);
        assert!(bare.check_for(b"j").is_ok());
        assert_ne!(bare.to_token(), ctx.to_token());
    }
}
