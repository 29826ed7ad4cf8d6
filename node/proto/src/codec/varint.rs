//! Minimal unsigned LEB128 varints, shared by the compact formats (context tokens, node clocks).
//!
//! 7 bits per byte, low bits first, high bit = "more follows"; a decoder accepts only the minimal
//! encoding, so every value has exactly one.

use crate::error::Error;

/// A cursor over the input that remembers its byte position for error messages.
pub(crate) struct Reader<'a> {
    pub(crate) rest: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `rest`, whose first byte is at position `pos` of the whole input.
    pub(crate) fn new(rest: &'a [u8], pos: usize) -> Self {
        Reader { rest, pos }
    }

    /// Reads one minimal unsigned LEB128 varint not above `max`; `what` names it in errors.
    pub(crate) fn varint(&mut self, what: &str, max: u64) -> Result<u64, Error> {
        let start = self.pos;
        let mut value: u64 = 0;
        let mut shift: u32 = 0;
        loop {
            let Some((&byte, rest)) = self.rest.split_first() else {
                return Err(Error::Decode(format!(
                    "truncated: {what} at byte {start} is incomplete"
                )));
            };
            self.rest = rest;
            self.pos += 1;
            let low = u64::from(byte & 0x7f);
            if shift == 63 && low > 1 || shift > 63 {
                return Err(Error::Decode(format!(
                    "varint overflow: {what} at byte {start} exceeds 64 bits"
                )));
            }
            value |= low << shift;
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 0 {
                    return Err(Error::Decode(format!(
                        "non-minimal varint: {what} at byte {start}"
                    )));
                }
                break;
            }
            shift += 7;
        }
        if value > max {
            return Err(Error::Decode(format!(
                "varint overflow: {what} at byte {start} is {value}, above {max}"
            )));
        }
        Ok(value)
    }
}

/// Appends the minimal encoding of `value`.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}
