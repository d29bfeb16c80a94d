//! What every module task of this node shares.

use std::path::PathBuf;
use std::sync::Arc;

use holdfast_key::ClusterKey;

use crate::paths::Paths;

/// What every module of this node shares.
#[derive(Debug)]
pub struct NodeContext {
    pub node: String,
    pub key: ClusterKey,
    pub incarnation: u64,
    pub paths: Paths,
    /// The `holdfast` executable, for scripts (`$SAFE/safekit`, PATH).
    pub exe: PathBuf,
    /// This node's modules' states, for module checkers.
    pub modules: Arc<crate::board::ModuleBoard>,
    /// This node's events (and the other nodes' the API relays).
    pub events: Arc<crate::events::EventBus>,
}
