//! The cluster's CA: created once by `holdfast cluster init`, kept on that
//! node only (its key never leaves it), signing the nodes' requests.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::{fingerprint, PkiError, CA_VALIDITY_DAYS, NODE_VALIDITY_DAYS};

/// The CA's certificate and key.
pub struct Authority {
    /// rcgen's view of the CA (its name and key), for signing.
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// The certificate itself, as handed out and pinned.
    pem: String,
    der: Vec<u8>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A new CA for the cluster `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(|e| PkiError::certificate("CA key", e))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("holdfast cluster {cluster} CA"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        let issuer = params
            .self_signed(&key)
            .map_err(|e| PkiError::certificate("CA certificate", e))?;
        Ok(Self {
            pem: issuer.pem(),
            der: issuer.der().to_vec(),
            issuer,
            key,
        })
    }

    /// The CA as written by [`Authority::certificate_pem`] and
    /// [`Authority::key_pem`] (or an operator's CA): the key must be the
    /// certificate's.
    pub fn load(certificate_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::certificate("CA key", e))?;
        let der = pem_der(certificate_pem, "CA certificate")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::certificate("CA certificate", e))?;
        if parsed.tbs_certificate.subject_pki.raw != key.public_key_der().as_slice() {
            return Err(PkiError::certificate(
                "CA key",
                "it is not the key of the CA certificate",
            ));
        }
        let issuer = CertificateParams::from_ca_cert_der(&der.clone().into())
            .and_then(|params| params.self_signed(&key))
            .map_err(|e| PkiError::certificate("CA certificate", e))?;
        Ok(Self {
            issuer,
            key,
            pem: certificate_pem.to_string(),
            der,
        })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.der)
    }

    /// Signs a node's request: the certificate names the node (DNS name) and
    /// the addresses it is reached at, whatever the request asked for.
    pub fn sign(
        &self,
        request: &SigningRequest,
        node: &str,
        addresses: &[std::net::IpAddr],
    ) -> Result<String, PkiError> {
        let parsed = CertificateSigningRequestParams::from_pem(&request.0)
            .map_err(|e| PkiError::certificate("certificate request", e))?;
        let params = node_params(node, addresses)?;
        let certificate = params
            .signed_by(&parsed.public_key, &self.issuer, &self.key)
            .map_err(|e| PkiError::certificate(format!("certificate of {node}"), e))?;
        Ok(certificate.pem())
    }
}

/// A node's certificate request (PEM), made with a key that stays on it.
#[derive(Debug, Clone)]
pub struct SigningRequest(pub String);

impl SigningRequest {
    /// A new key for `node` and its request: (request, key PEM).
    pub fn generate(node: &str) -> Result<(Self, String), PkiError> {
        let key = KeyPair::generate().map_err(|e| PkiError::certificate("node key", e))?;
        let params = node_params(node, &[])?;
        let request = params
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .map_err(|e| PkiError::certificate("certificate request", e))?;
        Ok((Self(request), key.serialize_pem()))
    }
}

fn node_params(node: &str, addresses: &[std::net::IpAddr]) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(vec![node.to_string()])
        .map_err(|e| PkiError::certificate(format!("node name {node:?}"), e))?;
    params
        .subject_alt_names
        .extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, node);
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // A node is both: it serves the API and calls other nodes'.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(NODE_VALIDITY_DAYS);
    Ok(params)
}

pub(crate) fn pem_der(pem: &str, what: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::certificate(what, e))
}
