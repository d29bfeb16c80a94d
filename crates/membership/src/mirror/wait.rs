//! Why a node waits (WAIT), and which reasons keep it from ever making
//! itself primary.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WaitReason {
    /// `prestart` is running.
    Starting,
    /// Listening for the peer's heartbeat.
    PeerUnknown,
    /// The peer was elected; waiting for it to start as primary.
    PeerElected,
    /// Elected here; waiting for the peer to agree (yield).
    PeerToAgree,
    /// The primary was lost and failover is off.
    FailoverOff,
    /// Started with `second`: waits for a primary.
    AwaitPrimary,
    /// This node's data may be stale (a restart after being SECOND, or an
    /// unfinished reintegration): it never makes itself primary.
    NotUpToDate,
    /// A resource checker reports a missing resource (SafeKit's `wait`
    /// action): comes back by itself when it returns.
    ResourceMissing,
    /// The fencing script failed: the old primary may still run.
    FenceFailed,
    /// The recovery limit (maxloop within loop_interval) was reached here:
    /// not primary again until the counter resets or an administrator acts.
    Suspended,
    /// Neither the peer nor the witness confirmed the primary role in time:
    /// the application was stopped; waiting for either.
    LeaseLost,
    /// The peer is silent and the split-brain checker's addresses do not
    /// answer: the other side may be the one to keep the service.
    TieBreakerLost,
}

impl WaitReason {
    pub(super) fn describe(self, peer: &str) -> String {
        match self {
            WaitReason::Starting => "running prestart".into(),
            WaitReason::PeerUnknown => format!("waiting for the heartbeat of {peer}"),
            WaitReason::PeerElected => {
                format!("{peer} is elected primary; waiting for it to start")
            }
            WaitReason::PeerToAgree => format!("elected primary; waiting for {peer} to agree"),
            WaitReason::FailoverOff => {
                "failover is off: waiting; run `holdfast prim` here to force this node primary"
                    .into()
            }
            WaitReason::AwaitPrimary => {
                format!("started with `second`: waiting for {peer} to be primary")
            }
            WaitReason::NotUpToDate => format!(
                "data may not be up to date here: waiting for {peer}; if you are sure this node has valid data, run `holdfast prim`"
            ),
            WaitReason::ResourceMissing => "a resource is missing".into(),
            WaitReason::Suspended => "recovery limit reached on this node".into(),
            WaitReason::TieBreakerLost => format!(
                "no heartbeat from {peer} and no split-brain witness answers the ping: waiting for either"
            ),
            WaitReason::LeaseLost => format!(
                "split-brain protection: neither {peer} nor the witness could be reached in time, the application was stopped; waiting for either"
            ),
            WaitReason::FenceFailed => format!(
                "the fencing script failed: {peer} may still run the application; run `holdfast prim` once it is known to be down"
            ),
        }
    }

    /// Reasons under which this node never makes itself primary.
    pub(super) fn passive(self) -> bool {
        matches!(
            self,
            WaitReason::FailoverOff
                | WaitReason::AwaitPrimary
                | WaitReason::NotUpToDate
                | WaitReason::ResourceMissing
                | WaitReason::Suspended
                | WaitReason::FenceFailed
        )
    }
}
