//! Node clocks from peers or the disk: no panic, and whatever decodes is in normal form and
//! re-encodes to the same bytes (one encoding per clock).
#![no_main]

use dynakv_proto::codec::clock::{decode_clock, encode_clock};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(clock) = decode_clock(data) {
        assert_eq!(encode_clock(&clock), data);
        assert!(clock
            .entries()
            .iter()
            .all(|(_, e)| e.validate() && !e.is_empty()));
    }
});
