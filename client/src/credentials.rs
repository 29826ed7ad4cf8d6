//! [`Credentials`]: what a client trusts (the cluster CA certificate) and proves (its own
//! certificate and key from `dynakv ca issue-client`, whose role decides what it may do).

use std::path::Path;

use dynakv_transport::ClientCert;

use crate::ClientError;

/// The TLS material of a client. Every node requires a client certificate from the cluster CA;
/// the role written in it (read, write or admin) decides which requests the node serves.
#[derive(Clone)]
pub struct Credentials {
    pub(crate) ca_pem: String,
    pub(crate) cert: Option<ClientCert>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("Credentials")
            .field(
                "identity",
                &self.cert.as_ref().and_then(ClientCert::identity),
            )
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The CA certificate (PEM) and this client's certificate and private key (PEM).
    pub fn new(
        ca_pem: impl Into<String>,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Credentials {
        Credentials {
            ca_pem: ca_pem.into(),
            cert: Some(ClientCert {
                cert_pem: cert_pem.into(),
                key_pem: key_pem.into(),
            }),
        }
    }

    /// Only the CA certificate. Every node refuses such a client at the handshake (the error
    /// says a client certificate is required); useful to check exactly that.
    pub fn without_certificate(ca_pem: impl Into<String>) -> Credentials {
        Credentials {
            ca_pem: ca_pem.into(),
            cert: None,
        }
    }

    /// Reads the CA certificate, the client certificate and its key from files.
    ///
    /// Errors: [`ClientError::Config`] naming the file that is missing or unreadable, or a key
    /// file other users may read (unix).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, ClientError> {
        let ca_pem = std::fs::read_to_string(ca).map_err(|e| {
            ClientError::Config(format!(
                "cannot read the CA certificate {} ({e})",
                ca.display()
            ))
        })?;
        if !cert.exists() {
            return Err(ClientError::Config(format!(
                "no client certificate at {}: this cluster requires one; see `dynakv ca \
                 issue-client` (then pass --cert/--key or set DYNAKV_CERT and DYNAKV_KEY)",
                cert.display()
            )));
        }
        let cert = ClientCert::load(cert, key).map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Credentials {
            ca_pem,
            cert: Some(cert),
        })
    }
}
