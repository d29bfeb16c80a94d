//! What `holdfast state` shows of a module on this node.

use serde::{Deserialize, Serialize};

use crate::module::State;

/// What `holdfast state` shows for one module on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleView {
    pub state: State,
    pub transient: bool,
    pub app_active: bool,
    /// Why the module is in this state (last transition, or what it waits for).
    pub reason: String,
    pub peer: String,
    /// The peer's state, when its heartbeat is fresh.
    pub peer_state: Option<State>,
    /// Per heartbeat network: a heartbeat arrived within the timeout.
    pub networks_up: Vec<bool>,
    pub epoch: u64,
    pub running_script: Option<String>,
    /// Farm modules: the other nodes and the buckets served here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub farm: Option<FarmView>,
}

/// What `holdfast state` shows of a farm beyond the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmView {
    /// The other nodes, with their state when their heartbeat is fresh.
    pub peers: Vec<(String, Option<State>)>,
    /// How many of the 256 buckets this node serves.
    pub buckets: usize,
}
