//! The static part of the mirror machine, from the module configuration.

use std::time::Duration;

use holdfast_config::{DefaultPrimary, ModuleConfig};

use crate::lease::LeaseSettings;

/// The static part of the state machine, from the module configuration.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    pub local: String,
    pub peer: String,
    pub failover: bool,
    pub default_primary: DefaultPrimary,
    pub swap_back: bool,
    pub timeout: Duration,
    pub networks: usize,
    /// This daemon's incarnation: tells the peer promise of this life from
    /// one heard before a restart.
    pub incarnation: u64,
    /// Split-brain protection by a witness's lease, if configured.
    pub witness: Option<LeaseSettings>,
    /// A split-brain checker (ping of tie-breaker addresses) reports to
    /// [`MirrorModule::splitbrain_witness`](super::MirrorModule::splitbrain_witness).
    pub splitbrain: bool,
}

impl MirrorSettings {
    /// `None` when `local` is not one of the module's two nodes.
    pub fn from_config(config: &ModuleConfig, local: &str) -> Option<Self> {
        config.nodes.iter().find(|n| n.name == local)?;
        let peer = config.nodes.iter().find(|n| n.name != local)?;
        Some(Self {
            local: local.to_string(),
            peer: peer.name.clone(),
            failover: config.failover,
            default_primary: config.default_primary.clone(),
            swap_back: config.swap_back,
            timeout: config.heartbeat.timeout,
            networks: config.heartbeat.networks.len(),
            incarnation: 0,
            witness: config.witness.as_ref().map(|w| LeaseSettings {
                duration: w.lease,
                renew: config.heartbeat.pulse,
                stop_budget: config.scripts.stop_budget(),
            }),
            splitbrain: config.splitbrain.is_some(),
        })
    }
}
