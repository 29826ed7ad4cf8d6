//! Context tokens, as bytes and as the base64url text clients send: no panic; a decoded context
//! encodes back to bytes that decode to the same context.
#![no_main]

use dynakv_proto::codec::token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(vv) = token::decode_context(data) {
        let again = token::decode_context(&token::encode_context(&vv));
        assert_eq!(again.ok(), Some(vv));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(vv) = token::context_from_token(text) {
            let again = token::context_from_token(&token::context_to_token(&vv));
            assert_eq!(again.ok(), Some(vv));
        }
    }
});
