//! Membership and the module state machines, sans-IO.
//!
//! - [`module`]: what every module's machine speaks with its shell, mirror
//!   or farm: states, scripts, commands, actions; [`view`]: what `holdfast
//!   state` shows of a module.
//! - [`datagram`]: the sealed format of every datagram between nodes and
//!   the witness (HMAC-SHA256 with the cluster key of `holdfast-key`).
//! - [`heartbeat`]: the UDP heartbeat message (encode, verify, replay
//!   protection). Pure functions over bytes.
//! - [`mirror`]: the mirror module state machine — **where failover is
//!   decided**. Events in (heartbeat, command, script exit, tick), actions out
//!   (run script, log, persist). No clocks, sockets or processes here: the
//!   daemon's I/O shell feeds it and carries out what it asks, and the
//!   simulation tests drive it with virtual time.
//! - [`farm`]: the farm module state machine — **where load-balancing
//!   buckets are decided** among the UP nodes.
//! - [`lease`]: split-brain protection by a witness — the node's lease, the
//!   witness's decisions, their authenticated datagrams.
//! - [`connector`]: the replication connector's failure policy — **what a
//!   primary does when its secondary fails** (degrade or block, hold then
//!   ALONE, fencing the peer's copy through the witness), per replicated
//!   directory; the daemon's connector threads carry out its decisions.
//! - [`recovery`]: the recovery policy (maxloop within loop_interval) that
//!   turns checker failures into local restarts, failover, and a hold.

pub mod connector;
pub mod datagram;
pub mod farm;
pub mod heartbeat;
pub mod lease;
pub mod mirror;
pub mod module;
pub mod recovery;
pub mod view;

pub use datagram::DatagramError;
pub use farm::{FarmAction, FarmModule, FarmSettings, FarmStatus};
pub use heartbeat::{Heartbeat, HeartbeatStatus, ReplayGuard};
pub use mirror::{Handover, MirrorModule, MirrorSettings, PeerStatus};
pub use module::{
    Action, Command, CommandError, LogLevel, Origin, Persistent, Script, ScriptAction,
    ScriptOutcome, ScriptRun, State,
};
pub use view::{FarmView, ModuleView};
