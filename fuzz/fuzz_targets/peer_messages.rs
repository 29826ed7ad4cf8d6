//! Peer frames (every mechanism's messages, gossip included), then the gossip validation a node
//! applies before it touches its state: no panic, and decoded frames re-encode equal.
#![no_main]

use dynakv_proto::peer::PeerMsg;
use dynakv_proto::wire::{self, PeerFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = wire::decode::<PeerFrame>(data) else {
        return;
    };
    let bytes = wire::encode(&frame).expect("a decoded frame encodes");
    assert_eq!(
        wire::decode::<PeerFrame>(&bytes).ok().as_ref(),
        Some(&frame)
    );
    let PeerFrame::Msg(msg) = frame;
    if let PeerMsg::Gossip(g) = msg {
        let _ = g.validate(None);
    }
});
