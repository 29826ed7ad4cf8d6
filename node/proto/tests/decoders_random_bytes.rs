//! Random bytes against every decoder of data that comes from the network or the disk: client
//! and server frames, peer frames (every mechanism's messages, gossip included), stored
//! records, backup files, context tokens. None may panic; whatever decodes must encode and decode back to
//! itself (so a decoder never accepts a form it cannot reproduce). The cargo-fuzz targets in
//! `fuzz/` drive the same decoders with coverage guidance; these run in `cargo test`.

use dynakv_proto::codec::{self, token};
use dynakv_proto::wire::{self, ClientFrame, PeerFrame, ServerFrame};
use proptest::prelude::*;

fn round_trips<T>(bytes: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = wire::decode::<T>(bytes) {
        let again = wire::encode(&value).and_then(|b| wire::decode::<T>(&b));
        assert_eq!(
            again.ok().as_ref(),
            Some(&value),
            "re-encoding changed {value:?}"
        );
    }
}

/// Bytes that often start like a real frame: a valid tag byte and small varints, so the
/// decoders get past the first byte more often than with uniform noise.
fn framed() -> impl Strategy<Value = Vec<u8>> {
    (0u8..12, proptest::collection::vec(any::<u8>(), 0..256)).prop_map(|(tag, mut rest)| {
        rest.insert(0, tag);
        rest
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn client_and_server_frames_never_panic(bytes in prop_oneof![framed(), proptest::collection::vec(any::<u8>(), 0..512)]) {
        round_trips::<ClientFrame>(&bytes);
        round_trips::<ServerFrame>(&bytes);
    }

    #[test]
    fn peer_frames_never_panic(bytes in prop_oneof![framed(), proptest::collection::vec(any::<u8>(), 0..512)]) {
        round_trips::<PeerFrame>(&bytes);
    }

    #[test]
    fn stored_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(object) = codec::decode_object(&bytes) {
            let again = codec::encode_object(&object).and_then(|b| codec::decode_object(&b));
            prop_assert_eq!(again.ok(), Some(object));
        }
    }

    #[test]
    fn backup_files_never_panic(rest in proptest::collection::vec(any::<u8>(), 0..512), header in any::<bool>()) {
        // Half the inputs start with a valid header, so the record parser is reached.
        let mut bytes = if header { codec::backup::backup_header(3).to_vec() } else { Vec::new() };
        bytes.extend(rest);
        if let Ok((p, items)) = codec::backup::decode_backup_file(&bytes) {
            let mut again = codec::backup::backup_header(p).to_vec();
            for (k, o) in &items {
                again.extend(codec::backup::encode_backup_record(k, o).expect("encodes"));
            }
            prop_assert_eq!(codec::backup::decode_backup_file(&again).ok(), Some((p, items)));
        }
    }

    #[test]
    fn context_tokens_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), text in ".{0,80}") {
        if let Ok(vv) = token::decode_context(&bytes) {
            prop_assert_eq!(token::decode_context(&token::encode_context(&vv)).ok(), Some(vv));
        }
        let _ = token::context_from_token(&text);
        // Bound or not: a context that decodes encodes back to the same bytes.
        let mut bound = vec![token::FORMAT_BOUND];
        bound.extend(&bytes);
        for input in [&bytes, &bound] {
            if let Ok((c, Some(h))) = token::decode_keyed_context(input) {
                let mut again = vec![token::FORMAT_BOUND];
                again.extend(h.to_be_bytes());
                again.extend(token::encode_context(&c));
                prop_assert_eq!(&again, input);
            }
        }
    }
}

proptest! {
    /// Real contexts (with holes or without) bound to random keys: the token names the key's
    /// hash, decodes to the same clock, passes for that key and is refused for any other.
    #[test]
    fn bound_tokens_round_trip_and_refuse_other_keys(
        dots in proptest::collection::vec((1u32..6, 1u64..4, 1u64..40), 0..30),
        key in proptest::collection::vec(any::<u8>(), 1..20),
        other in proptest::collection::vec(any::<u8>(), 1..20),
    ) {
        use dynakv_proto::dvv::{Actor, Dot, NodeClock};
        let mut clock = NodeClock::new();
        for (node, inc, counter) in dots {
            clock.add(&Dot::new(Actor::new(dynakv_ring::NodeId(node), inc), counter));
        }
        let text = token::bound_context_to_token(&key, &clock);
        let (back, hash) = token::keyed_context_from_token(&text).expect("decodes");
        prop_assert_eq!(&back, &clock);
        prop_assert_eq!(hash, Some(token::key_hash(&key)));
        prop_assert_eq!(token::context_from_token_for(&key, &text).ok(), Some(clock.clone()));
        if token::key_hash(&other) != token::key_hash(&key) {
            prop_assert!(token::context_from_token_for(&other, &text).is_err());
        }
    }
}
