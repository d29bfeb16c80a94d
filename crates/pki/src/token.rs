//! The one-time enrolment token a new node joins with: where the CA's node
//! answers, the CA's fingerprint (so the joining node trusts that CA and no
//! other, with nothing copied by hand), and a secret that authenticates the
//! request. Written `hfj1/<address:port>/<fingerprint>/<secret>`.

use std::net::SocketAddr;

use crate::PkiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentToken {
    /// The API address of the node holding the CA.
    pub address: SocketAddr,
    /// SHA-256 of the CA certificate, hex.
    pub fingerprint: String,
    /// 32 random bytes, hex; the CA's node keeps only its hash.
    pub secret: String,
}

const PREFIX: &str = "hfj1";

impl EnrolmentToken {
    pub fn new(address: SocketAddr, fingerprint: String) -> Self {
        let secret: [u8; 32] = rand::random();
        Self {
            address,
            fingerprint,
            secret: hex::encode(secret),
        }
    }

    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let bad = |what: &str| {
            PkiError::Token(format!("{what} (expected {PREFIX}/<address:port>/<fingerprint>/<secret>, as printed by `holdfast cluster init` or `holdfast cluster token`)"))
        };
        let parts: Vec<&str> = text.trim().split('/').collect();
        let [prefix, address, fingerprint, secret] = parts[..] else {
            return Err(bad("not four parts separated by /"));
        };
        if prefix != PREFIX {
            return Err(bad(&format!("unknown version {prefix:?}")));
        }
        let address = address
            .parse()
            .map_err(|_| bad(&format!("address {address:?} is not address:port")))?;
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex64(fingerprint) {
            return Err(bad("the fingerprint is not 64 hex digits"));
        }
        if !hex64(secret) {
            return Err(bad("the secret is not 64 hex digits"));
        }
        Ok(Self {
            address,
            fingerprint: fingerprint.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }

    /// SHA-256 of the secret, hex: what the CA's node stores.
    pub fn secret_hash(secret: &str) -> String {
        crate::fingerprint(secret.as_bytes())
    }
}

impl std::fmt::Display for EnrolmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}/{}/{}/{}",
            self.address, self.fingerprint, self.secret
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_bad_ones_name_the_part() {
        let token = EnrolmentToken::new("198.18.0.1:9453".parse().unwrap(), "ab".repeat(32));
        assert_eq!(EnrolmentToken::parse(&token.to_string()).unwrap(), token);
        let text = token.to_string();
        let err = EnrolmentToken::parse(&text.replace("198.18.0.1:9453", "nowhere")).unwrap_err();
        assert!(err.to_string().contains("address \"nowhere\""), "{err}");
        let err = EnrolmentToken::parse(&text[..text.len() - 2]).unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
        let err = EnrolmentToken::parse("hfj2/a/b/c").unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
    }
}
