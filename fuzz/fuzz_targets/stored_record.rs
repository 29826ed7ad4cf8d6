//! Stored object records as read back from disk (a corrupt or hostile data directory): no
//! panic; a record that decodes re-encodes to one that decodes equal.
#![no_main]

use dynakv_proto::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(object) = codec::decode_object(data) {
        let bytes = codec::encode_object(&object).expect("a decoded record encodes");
        assert_eq!(codec::decode_object(&bytes).ok(), Some(object));
    }
});
