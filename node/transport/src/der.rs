//! A tiny, defensive DER reader for the few X.509 fields the node needs.
//!
//! rcgen (without its `x509-parser` feature) and rustls expose no certificate parser, so we walk
//! the DER ourselves. Only what we need: the subject name, the public key (SPKI) and the DNS names
//! of the subjectAltName extension. Every function takes untrusted bytes and returns `None` on
//! anything unexpected; nothing here indexes without a bounds check, so garbage never panics.

/// One DER element: its tag, its full encoding (tag + length + content) and its content.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) full: &'a [u8],
    pub(crate) content: &'a [u8],
}

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_EXTENSIONS: u8 = 0xA3; // [3] EXPLICIT, constructed
const TAG_VERSION: u8 = 0xA0; // [0] EXPLICIT, constructed
const TAG_DNS_NAME: u8 = 0x82; // GeneralName dNSName [2] IMPLICIT IA5String
/// OID 2.5.29.17 (subjectAltName), content bytes only.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1D, 0x11];

/// Splits the first element off `input`; `None` if it is not well-formed DER.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // Multi-byte (high) tag numbers never occur in the fields we read; refuse them.
    if tag & 0x1F == 0x1F {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        // Long form: 1..=4 length bytes (0x80 alone would be BER's indefinite length).
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let header_len = input.len() - rest.len();
    let (content, after) = rest.split_at_checked(len)?;
    let full = input.get(..header_len + len)?;
    Some((Tlv { tag, full, content }, after))
}

/// Iterates over the elements of a constructed value's content; stops at the first malformed one.
fn children(content: &[u8]) -> impl Iterator<Item = Tlv<'_>> {
    let mut rest = content;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (tlv, after) = read_tlv(rest)?;
        rest = after;
        Some(tlv)
    })
}

/// The fields of `tbsCertificate`, in order, with the optional `[0] version` skipped, so that
/// index 0 is the serial number, 2 the issuer, 4 the subject and 5 the SPKI.
fn tbs_fields(cert_der: &[u8]) -> Option<impl Iterator<Item = Tlv<'_>>> {
    let (cert, _) = read_tlv(cert_der)?;
    if cert.tag != TAG_SEQUENCE {
        return None;
    }
    let tbs = children(cert.content).next()?;
    if tbs.tag != TAG_SEQUENCE {
        return None;
    }
    Some(children(tbs.content).filter(|t| t.tag != TAG_VERSION))
}

/// The subject Name of a certificate, as its full DER encoding.
pub(crate) fn subject(cert_der: &[u8]) -> Option<&[u8]> {
    let field = tbs_fields(cert_der)?.nth(4)?;
    (field.tag == TAG_SEQUENCE).then_some(field.full)
}

/// The SubjectPublicKeyInfo of a certificate, as its full DER encoding.
pub(crate) fn subject_public_key_info(cert_der: &[u8]) -> Option<&[u8]> {
    let field = tbs_fields(cert_der)?.nth(5)?;
    (field.tag == TAG_SEQUENCE).then_some(field.full)
}

/// The DNS names in the certificate's subjectAltName extension (empty if it has none or the
/// certificate is malformed).
pub(crate) fn san_dns_names(cert_der: &[u8]) -> Vec<&[u8]> {
    san_dns_names_opt(cert_der).unwrap_or_default()
}

fn san_dns_names_opt(cert_der: &[u8]) -> Option<Vec<&[u8]>> {
    let exts = tbs_fields(cert_der)?.find(|t| t.tag == TAG_EXTENSIONS)?;
    let (ext_list, _) = read_tlv(exts.content)?;
    for ext in children(ext_list.content) {
        let mut parts = children(ext.content);
        let oid = parts.next()?;
        if oid.tag != TAG_OID || oid.content != OID_SUBJECT_ALT_NAME {
            continue;
        }
        // Skip the optional `critical` BOOLEAN and take the extnValue OCTET STRING.
        let value = parts.find(|t| t.tag == TAG_OCTET_STRING)?;
        let (names, _) = read_tlv(value.content)?;
        if names.tag != TAG_SEQUENCE {
            return None;
        }
        return Some(
            children(names.content)
                .filter(|n| n.tag == TAG_DNS_NAME)
                .map(|n| n.content)
                .collect(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_short_and_long_lengths() {
        let (t, rest) = read_tlv(&[0x04, 0x02, 0xAA, 0xBB, 0xCC]).expect("short form");
        assert_eq!(
            (t.tag, t.content, rest),
            (0x04, &[0xAA, 0xBB][..], &[0xCC][..])
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend(std::iter::repeat_n(7u8, 0x80));
        let (t, rest) = read_tlv(&long).expect("long form");
        assert_eq!((t.content.len(), t.full.len(), rest.len()), (0x80, 0x83, 0));
    }

    #[test]
    fn rejects_truncated_indefinite_and_huge() {
        assert!(read_tlv(&[]).is_none());
        assert!(read_tlv(&[0x30]).is_none());
        assert!(read_tlv(&[0x30, 0x05, 0x00]).is_none());
        assert!(read_tlv(&[0x30, 0x80, 0x00, 0x00]).is_none());
        assert!(read_tlv(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]).is_none());
        assert!(read_tlv(&[0x30, 0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9]).is_none());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_tlv(&bytes);
            let _ = subject(&bytes);
            let _ = subject_public_key_info(&bytes);
            let _ = san_dns_names(&bytes);
        }
    }
}
