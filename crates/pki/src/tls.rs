//! TLS settings (rustls, ring): the API's server side, where a client
//! certificate is optional but, when presented, must be the cluster CA's; a
//! node calling another, presenting its certificate and trusting the
//! cluster's CA only; and a new node's first contact, trusting the CA its
//! token pins.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::{fingerprint, Identity, PkiError};

/// ring, not aws-lc-rs (rustls's default), because it builds with the C
/// compiler alone; it offers no post-quantum key exchange, hence the
/// deprecation this allows.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

fn client_verifier(
    ca: &CertificateDer<'static>,
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| PkiError::certificate("CA certificate", e))
}

/// The HTTPS API's settings: this node's certificate (with the CA after
/// it, so a joining node can find the CA its token pins); a client
/// certificate is optional (browsers and the CLI have none), and one not
/// issued by the cluster's CA fails the handshake.
pub fn server_config(identity: &Identity) -> Result<ServerConfig, PkiError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_verifier(&identity.ca, true)?)
        .with_single_cert(
            vec![identity.certificate.clone(), identity.ca.clone()],
            identity.key(),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client trusting the cluster's CA only, presenting `identity`'s
/// certificate when given (a node calling another).
pub fn client_config(
    ca: &CertificateDer<'static>,
    identity: Option<&Identity>,
) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?);
    let mut config = match identity {
        Some(identity) => {
            builder.with_client_auth_cert(vec![identity.certificate.clone()], identity.key())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A joining node's client: the server must send, after its certificate,
/// the CA whose SHA-256 is `fingerprint`, and be certified by it.
pub fn first_contact_config(fingerprint: &str) -> Result<ClientConfig, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            fingerprint: fingerprint.to_string(),
            provider: provider(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The node a verified client certificate names.
pub fn node_name(certificates: &[CertificateDer<'_>]) -> Option<String> {
    crate::identity::facts_of_der(certificates.first()?)
        .ok()
        .map(|f| f.node)
}

/// Accepts a server only under the CA its chain carries and the token
/// pins.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's CA is not the one the enrolment token names ({})",
                    self.fingerprint
                ))
            })?;
        let roots =
            roots(&ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The certificate is signed by the CA and the key is its own: a mismatch
/// found here is named, instead of every handshake failing.
pub(crate) fn check(identity: &Identity) -> Result<(), PkiError> {
    let key = provider()
        .key_provider
        .load_private_key(identity.key())
        .map_err(|e| PkiError::certificate("node key", e))?;
    rustls::sign::CertifiedKey::new(vec![identity.certificate.clone()], key)
        .keys_match()
        .map_err(|e| PkiError::certificate("node key", format!("not the key of node.pem: {e}")))?;
    client_verifier(&identity.ca, false)?
        .verify_client_cert(&identity.certificate, &[], UnixTime::now())
        .map_err(|e| {
            PkiError::certificate("node certificate", format!("not valid under ca.pem: {e}"))
        })?;
    Ok(())
}
