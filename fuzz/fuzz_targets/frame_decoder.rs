//! The length-prefixed frame decoder fed in arbitrary chunks: it never panics, never returns a
//! frame over its limit, and an error (oversized announcement) leaves it failing.
#![no_main]

use dynakv_transport::FrameDecoder;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::new(LIMIT);
    // The first byte picks the chunk size, so one input covers many ways to split the stream.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    for chunk in rest.chunks(usize::from(split).max(1)) {
        dec.push(chunk);
        loop {
            match dec.pop() {
                Ok(Some(frame)) => assert!(frame.len() <= LIMIT),
                Ok(None) => break,
                Err(_) => {
                    assert!(dec.pop().is_err(), "an oversized frame stays refused");
                    return;
                }
            }
        }
    }
    let _ = dec.finish();
});
