//! What a node proves itself with, and what a certificate says.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::authority::pem_der;
use crate::{fingerprint, PkiError};

/// What a node proves itself with: the CA it trusts, its certificate and
/// key. Parsed, not checked: [`crate::PkiFiles`] checks what it loads and
/// stores.
#[derive(Debug, Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub ca: CertificateDer<'static>,
    pub certificate_pem: String,
    pub certificate: CertificateDer<'static>,
    key: Vec<u8>,
    /// The node name the certificate carries.
    pub node: String,
}

impl Identity {
    pub fn from_pem(ca_pem: &str, certificate_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let ca = CertificateDer::from(pem_der(ca_pem, "CA certificate")?);
        let certificate = CertificateDer::from(pem_der(certificate_pem, "node certificate")?);
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| PkiError::certificate("node key", e))?;
        Ok(Self {
            ca_pem: ca_pem.to_string(),
            ca,
            certificate_pem: certificate_pem.to_string(),
            node: certificate_facts(certificate_pem)?.node,
            certificate,
            key: key.secret_der().to_vec(),
        })
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key.clone()).expect("checked when loaded")
    }

    pub fn ca_fingerprint(&self) -> String {
        fingerprint(&self.ca)
    }
}

/// What the state shows of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The first DNS name of the certificate, else its common name.
    pub node: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    pub fingerprint: String,
}

pub fn certificate_facts(pem: &str) -> Result<CertificateFacts, PkiError> {
    facts_of_der(&pem_der(pem, "certificate")?)
}

pub(crate) fn facts_of_der(der: &[u8]) -> Result<CertificateFacts, PkiError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::certificate("certificate", e))?;
    let dns = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(name) => Some(name.to_string()),
                _ => None,
            })
        });
    let common = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(CertificateFacts {
        node: dns.or(common).unwrap_or_default(),
        not_after: parsed.validity().not_after.timestamp(),
        fingerprint: fingerprint(der),
    })
}
