//! The cluster's record, the same on every node: its members and where
//! their APIs answer, the users and the API tokens (hashes only). A change
//! made through any node's API raises the version and is pushed to every
//! other member; a node takes a record only with a higher version and the
//! same CA (`Record::newer_than`), and at start asks the members for theirs,
//! catching up on what it missed while down. Two changes made at once on
//! two nodes are not merged: the one pushed last wins (docs/operations.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::access::Role;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Record {
    pub version: u64,
    /// The cluster's name (in the CA's name).
    pub cluster: String,
    /// SHA-256 of the CA certificate: records of another cluster are
    /// refused.
    pub ca_fingerprint: String,
    /// The node holding the CA's key (enrolment and rotation go to it).
    pub ca_node: String,
    pub nodes: BTreeMap<String, Member>,
    pub users: BTreeMap<String, User>,
    pub tokens: BTreeMap<String, ApiToken>,
    /// Signs the session tokens every member accepts (`access/signed.rs`),
    /// hex; empty in records made before it, which sign none.
    #[serde(default)]
    pub session_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Member {
    /// Where the node's HTTPS API answers.
    #[schema(value_type = String)]
    pub address: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct User {
    pub role: Role,
    /// argon2id, PHC string.
    pub password_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ApiToken {
    /// What it is for, as its creator said.
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret, hex (the secret is random, 256 bits: a slow
    /// hash would add nothing).
    pub secret_hash: String,
    /// Unix seconds.
    pub expires_at: u64,
    pub created_by: String,
}

impl Record {
    pub fn newer_than(&self, other: &Record) -> bool {
        self.version > other.version
            && (other.ca_fingerprint.is_empty() || self.ca_fingerprint == other.ca_fingerprint)
    }

    /// The members other than `node`, with their addresses.
    pub fn others<'a>(&'a self, node: &'a str) -> impl Iterator<Item = (&'a str, SocketAddr)> {
        self.nodes
            .iter()
            .filter(move |(name, _)| *name != node)
            .map(|(name, m)| (name.as_str(), m.address))
    }
}

/// `<state>/cluster/`, readable by root only: the record (password
/// hashes), the audit log, the CA node's enrolment tokens.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster")
}

pub fn path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("record.json")
}

pub fn load(path: &Path) -> Result<Option<Record>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is corrupt: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Replaces the record on disk (synced: a version once pushed is never
/// forgotten by a crash). Blocking: called off the runtime.
pub fn store(path: &Path, record: &Record) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    holdfast_replication::durable::replace(path, &bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}
