//! A node's PKI files (`<conf>/pki/`). `ca.pem` (the cluster's CA),
//! `node.pem` and `node.key` (this node's certificate and key) are on every
//! member; `ca.key` only on the node that ran `holdfast cluster init`. An
//! operator's own certificates go at the same paths (docs/operations.md).

use std::path::{Path, PathBuf};

use crate::{tls, Authority, Identity, PkiError};

/// Where a node keeps its PKI files.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub dir: PathBuf,
}

impl PkiFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn certificate(&self) -> PathBuf {
        self.dir.join("node.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("node.key")
    }

    /// Whether this node has a certificate (it is a member of a cluster).
    pub fn exists(&self) -> bool {
        self.ca().exists() && self.certificate().exists() && self.key().exists()
    }

    /// The CA, on the node that holds its key.
    pub fn authority(&self) -> Result<Option<Authority>, PkiError> {
        if !self.ca_key().exists() {
            return Ok(None);
        }
        Authority::load(&read(&self.ca())?, &read(&self.ca_key())?).map(Some)
    }

    /// Writes the CA (with its key when given) and this node's certificate
    /// and key; keys are readable by root only. The certificate must chain to
    /// the CA and match the key, or nothing is written.
    pub fn store(
        &self,
        ca_pem: &str,
        ca_key_pem: Option<&str>,
        certificate_pem: &str,
        key_pem: &str,
    ) -> Result<(), PkiError> {
        tls::check(&Identity::from_pem(ca_pem, certificate_pem, key_pem)?)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        if let Some(ca_key) = ca_key_pem {
            write(&self.ca_key(), ca_key, 0o600)?;
        }
        write(&self.key(), key_pem, 0o600)?;
        write(&self.certificate(), certificate_pem, 0o644)?;
        write(&self.ca(), ca_pem, 0o644)
    }

    /// This node's identity, checked (certificate signed by the CA, key
    /// matching the certificate).
    pub fn identity(&self) -> Result<Identity, PkiError> {
        let identity = Identity::from_pem(
            &read(&self.ca())?,
            &read(&self.certificate())?,
            &read(&self.key())?,
        )?;
        tls::check(&identity)?;
        Ok(identity)
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| io(path, e))
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Replaces `path` whole (temporary file synced, then renamed), so a crash
/// leaves the old file or the new one.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(|e| io(&temporary, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| io(path, e))
}
