//! The cluster's public key infrastructure: **where a node's certificate is
//! made and checked**. The cluster's certificate authority (CA) and the
//! nodes' certificates (`authority.rs`), a node's files on disk and its
//! identity (`files.rs`, `identity.rs`), the one-time enrolment token that lets a new
//! node ask the CA for a certificate (`token.rs`), and the TLS settings every
//! connection between nodes, and to the HTTPS API, uses (`tls.rs`: mutual
//! TLS with the CA's certificates, rustls).
//!
//! It knows nothing of the daemon: the API crate serves enrolment and the
//! CLI drives it.

mod authority;
mod files;
mod identity;
mod tls;
mod token;

pub use authority::{Authority, SigningRequest};
pub use files::PkiFiles;
pub use identity::{certificate_facts, CertificateFacts, Identity};
pub use rustls;
pub use tls::{client_config, first_contact_config, node_name, server_config};
pub use token::EnrolmentToken;

/// How long a node certificate issued by the cluster's CA is valid.
pub const NODE_VALIDITY_DAYS: i64 = 365;
/// How long the cluster's CA certificate is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Certificate { what: String, reason: String },
    #[error("enrolment token: {0}")]
    Token(String),
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

impl PkiError {
    fn certificate(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        PkiError::Certificate {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// SHA-256 of a certificate's DER bytes, in hex: what an enrolment token
/// pins the CA by.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}
