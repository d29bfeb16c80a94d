//! Membership and the module state machines, sans-IO.
//!
//! - [`heartbeat`]: the authenticated UDP heartbeat message (encode, verify,
//!   replay protection), sealed with the cluster key of `holdfast-key`.
//!   Pure functions over bytes.
//! - [`mirror`]: the mirror module state machine — **where failover is
//!   decided**. Events in (heartbeat, command, script exit, tick), actions out
//!   (run script, log, persist). No clocks, sockets or processes here: the
//!   daemon's I/O shell feeds it and carries out what it asks, and the
//!   simulation tests drive it with virtual time.
//! - [`farm`]: the farm module state machine — **where load-balancing
//!   buckets are decided** among the UP nodes.
//! - [`lease`]: split-brain protection by a witness — the node's lease, the
//!   witness's decisions, their authenticated datagrams.
//! - [`recovery`]: the recovery policy (maxloop within loop_interval) that
//!   turns checker failures into local restarts, failover, and a hold.

pub mod farm;
pub mod heartbeat;
pub mod lease;
pub mod mirror;
pub mod recovery;

pub use farm::{FarmAction, FarmModule, FarmSettings, FarmStatus, FarmView};
pub use heartbeat::{Heartbeat, HeartbeatError, ModuleStatus, ReplayGuard};
pub use mirror::{
    Action, Command, CommandError, Handover, LogLevel, MirrorModule, MirrorSettings, ModuleView,
    PeerStatus, Persistent, Script, ScriptAction, ScriptOutcome, ScriptRun, State,
};
