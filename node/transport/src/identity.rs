//! Who is on the other end of a connection, from its verified certificate: a cluster node, or
//! a client with a role. Client certificates come from the cluster CA
//! ([`ClusterCa::issue_client`], `dynakv ca issue-client`); their role is part of the
//! certificate (a SAN DNS name `{name}.{role}.client.dynakv`), so a node needs no user table:
//! whoever holds a certificate the CA signed has the role written in it.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use dynakv_ring::NodeId;
use rcgen::PKCS_ECDSA_P256_SHA256;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;

use crate::error::{Error, Result};
use crate::files::{check_private, parse_cert_pem, read_file, write_file};
use crate::tls::{node_id_from_cert, ClusterCa};
use crate::x509;

/// Suffix of the SAN DNS name that carries a client's name and role.
const CLIENT_SUFFIX: &str = ".client.dynakv";
/// Longest client name (one DNS label).
pub const MAX_CLIENT_NAME: usize = 63;

/// What a client may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `get`, `status`, cluster information.
    Read,
    /// Read, plus `put` and `delete`.
    Write,
    /// Everything: membership (`join`, `leave`, `remove`) and configuration too.
    Admin,
}

impl Role {
    /// Does this role allow what `needed` allows?
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Role> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(Error::Tls(format!(
                "unknown role {other:?} (expected read, write or admin)"
            ))),
        }
    }
}

/// The authenticated party on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A cluster node (certificate from `dynakv ca issue`).
    Node(NodeId),
    /// A client (certificate from `dynakv ca issue-client`).
    Client { name: String, role: Role },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Client { name, role } => write!(f, "client {name:?} ({role})"),
        }
    }
}

/// The identity a DER certificate names: a node, a client with its role, or `None` (no
/// dynakv identity, or malformed input; never panics). Only meaningful for a certificate whose
/// chain was verified against the cluster CA.
pub fn identity_from_cert(der: &[u8]) -> Option<Identity> {
    if let Some(id) = node_id_from_cert(der) {
        return Some(Identity::Node(id));
    }
    x509::dns_names(der)
        .iter()
        .find_map(|name| parse_client_name(name))
}

/// The authenticated identity on the other end of `conn` (its certificate was verified against
/// the cluster CA during the handshake). Call after the handshake completes.
pub fn peer_identity(conn: &quinn::Connection) -> Option<Identity> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    identity_from_cert(chain.first()?)
}

fn parse_client_name(san: &str) -> Option<Identity> {
    let rest = san.strip_suffix(CLIENT_SUFFIX)?;
    let (name, role) = rest.rsplit_once('.')?;
    check_client_name(name).ok()?;
    Some(Identity::Client {
        name: name.to_string(),
        role: role.parse().ok()?,
    })
}

/// A client name is one DNS label: 1 to 63 of `a-z`, `0-9` and `-`, not starting or ending
/// with `-`.
pub fn check_client_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Tls(format!(
            "bad client name {name:?}: use 1 to {MAX_CLIENT_NAME} characters of a-z, 0-9 and '-' \
             (not first or last)"
        )))
    }
}

/// A client's certificate and private key (PEM), as `dynakv ca issue-client` writes them.
#[derive(Clone)]
pub struct ClientCert {
    /// The certificate, signed by the cluster CA.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("ClientCert").finish_non_exhaustive()
    }
}

impl ClientCert {
    /// Writes the certificate to `cert` and the key to `key` (mode 0600 on unix).
    pub fn save(&self, cert: &Path, key: &Path) -> Result<()> {
        write_file(cert, &self.cert_pem, false)?;
        write_file(key, &self.key_pem, true)
    }

    /// Reads a certificate and key saved by [`ClientCert::save`]. Errors name the file that is
    /// missing, corrupt, or (on unix) a key readable by other users.
    pub fn load(cert: &Path, key: &Path) -> Result<ClientCert> {
        let out = ClientCert {
            cert_pem: read_file(cert, "client certificate")?,
            key_pem: read_file(key, "client private key")?,
        };
        parse_cert_pem(&out.cert_pem, cert)?;
        check_private(key, "client private key", false)?;
        Ok(out)
    }

    /// The identity this certificate names, if it is readable.
    pub fn identity(&self) -> Option<Identity> {
        let der = parse_cert_pem(&self.cert_pem, Path::new("client certificate")).ok()?;
        identity_from_cert(&der)
    }
}

impl ClusterCa {
    /// Issues a client certificate (fresh P-256 key) for `name` with `role`, valid for client
    /// authentication only. Issuing again for the same name gives another valid certificate.
    pub fn issue_client(&self, name: &str, role: Role) -> Result<ClientCert> {
        check_client_name(name)?;
        let san = format!("{name}.{role}{CLIENT_SUFFIX}");
        let tls = |e: rcgen::Error| Error::Tls(e.to_string());
        let mut params = CertificateParams::new(vec![san]).map_err(tls)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(tls)?;
        let cert = self.sign(&params, &key)?;
        Ok(ClientCert {
            cert_pem: cert,
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_carry_their_name_and_role() -> Result<()> {
        let ca = ClusterCa::generate()?;
        for role in [Role::Read, Role::Write, Role::Admin] {
            let cert = ca.issue_client("ops-1", role)?;
            assert_eq!(
                cert.identity(),
                Some(Identity::Client {
                    name: "ops-1".into(),
                    role
                })
            );
        }
        let node = ca.issue_node(NodeId(3))?;
        let der = parse_cert_pem(&node.cert_pem, Path::new("node.pem"))?;
        assert_eq!(identity_from_cert(&der), Some(Identity::Node(NodeId(3))));
        Ok(())
    }

    #[test]
    fn bad_names_and_roles_are_refused() -> Result<()> {
        let ca = ClusterCa::generate()?;
        for bad in ["", "-a", "a-", "Upper", "a.b", "a b", &"x".repeat(64)] {
            assert!(ca.issue_client(bad, Role::Read).is_err(), "{bad:?}");
        }
        assert!("root".parse::<Role>().is_err());
        assert!(Role::Admin.allows(Role::Write) && Role::Write.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Write) && !Role::Write.allows(Role::Admin));
        // A SAN that only looks like a client name is not one.
        assert_eq!(parse_client_name("a.superuser.client.dynakv"), None);
        assert_eq!(parse_client_name("a.b.admin.client.dynakv"), None);
        Ok(())
    }
}
