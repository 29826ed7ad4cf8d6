//! The few X.509 and PEM facts the node needs, read with the libraries rustls itself trusts:
//! `rustls-webpki` parses certificates (SAN DNS names, subject, public key) and
//! `rustls-pki-types` reads PEM. Every function takes untrusted bytes and returns `None` or an
//! error on anything malformed; nothing here panics.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The DNS names of a certificate's subjectAltName extension (empty for a certificate that
/// does not parse). Identity only: the chain must have been verified separately.
pub(crate) fn dns_names(cert_der: &[u8]) -> Vec<String> {
    let der = CertificateDer::from(cert_der);
    match webpki::EndEntityCert::try_from(&der) {
        Ok(cert) => cert.valid_dns_names().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// The subject name (DER content, without its outer SEQUENCE header).
pub(crate) fn subject(cert_der: &[u8]) -> Option<Vec<u8>> {
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(cert.subject().to_vec())
}

/// The SubjectPublicKeyInfo, DER with its SEQUENCE header (what rcgen's `public_key_der`
/// returns for a key pair).
pub(crate) fn subject_public_key_info(cert_der: &[u8]) -> Option<Vec<u8>> {
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(cert.subject_public_key_info().as_ref().to_vec())
}

/// Every certificate of a PEM text, in order; an error names what is wrong.
pub(crate) fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// The first private key of a PEM text (PKCS#8, SEC1 or PKCS#1).
pub(crate) fn pem_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(dns_names(&bytes).is_empty());
            prop_assert!(subject(&bytes).is_none());
            prop_assert!(subject_public_key_info(&bytes).is_none());
            let text = String::from_utf8_lossy(&bytes);
            let _ = pem_certs(&text);
            let _ = pem_key(&text);
        }
    }

    #[test]
    fn pem_without_a_key_is_an_error() {
        assert!(pem_key("").is_err());
        assert!(pem_certs("").is_ok_and(|c| c.is_empty()));
    }
}
