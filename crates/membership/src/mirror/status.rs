//! What the two nodes of a mirror module tell each other, and what
//! replication tells the machine of the peer's copy.

use serde::{Deserialize, Serialize};

use crate::module::State;

/// Why a node released the primary role on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handover {
    None,
    /// `swap`: the peer takes over even with failover off.
    Swap,
    /// `stop` of the primary: the peer takes over if failover is on.
    Stop,
}

/// What a node tells its peer in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub state: State,
    /// Scripts are running or queued (SafeKit's "Transient").
    pub transient: bool,
    /// The application may be running here: from the start of `start_prim`
    /// to the end of the forced `stop_prim`.
    pub app_active: bool,
    /// Highest primary epoch this node knows; raised at every takeover.
    pub epoch: u64,
    /// This node was primary last (persisted; for election and `lastprim`).
    pub last_primary: bool,
    /// This node will not become primary while the receiver is alive.
    pub yields: bool,
    pub handover: Handover,
    /// A SECOND asks its primary to swap (the `swap` command was run there).
    pub wants_swap: bool,
    /// This node may become primary: its copy of the replicated data is
    /// complete and current (always, without replicated directories), no
    /// resource is missing, the recovery policy does not hold it back, and it
    /// does not wait for an administrator (failover off, `second`).
    pub eligible: bool,
    /// The receiver's state as this node last heard it: lets a waiting node
    /// know that a stopped peer has already seen it waiting, so the two
    /// cannot both start on each other's stale STOP.
    pub seen: Option<State>,
    /// This node's clock when it built this status: `(incarnation,
    /// milliseconds since the module was created)`.
    pub clock: (u64, u64),
    /// The `clock` of the newest status heard from the receiver, while it
    /// is heard: the receiver's *peer promise* (see the module docs).
    pub echo: Option<(u64, u64)>,
}

impl PeerStatus {
    pub fn stopped() -> Self {
        Self {
            state: State::Stop,
            transient: false,
            app_active: false,
            epoch: 0,
            last_primary: false,
            yields: false,
            handover: Handover::None,
            wants_swap: false,
            eligible: true,
            seen: None,
            clock: (0, 0),
            echo: None,
        }
    }

    /// Equal but for the clocks, which change with every input and must not
    /// make a node send a heartbeat for each one it receives.
    pub(super) fn same_apart_from_clocks(&self, other: &Self) -> bool {
        Self {
            clock: other.clock,
            echo: other.echo,
            ..self.clone()
        } == *other
    }
}

/// What replication says of the peer's copy of the data, for the witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerData {
    /// Nothing to report (no replication, or being brought up to date).
    #[default]
    Unknown,
    /// Mirroring: the peer has every change.
    Current,
    /// Replication is about to acknowledge changes the peer lacks; it
    /// waits for [`Action::PeerFenced`](crate::module::Action::PeerFenced)
    /// with this epoch (or a later one).
    Outdated { epoch: u64 },
}
