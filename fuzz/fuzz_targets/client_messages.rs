//! Client request frames (what a node decodes from any client) and reply frames (what a client
//! decodes from a node): no panic, and whatever decodes re-encodes to an equal value.
#![no_main]

use dynakv_proto::wire::{self, ClientFrame, ServerFrame};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = wire::decode::<T>(data) {
        let bytes = wire::encode(&value).expect("a decoded value encodes");
        assert_eq!(wire::decode::<T>(&bytes).ok(), Some(value));
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ClientFrame>(data);
    round_trip::<ServerFrame>(data);
});
