//! holdfast-checkers: the failure detectors of a module and their verdict
//! logic — not what the module does about them (the state machine decides,
//! from [`CheckerConfig::action`]). What a checker is configured to do is
//! plain data in [`holdfast_config::checker`].
//!
//! [`CheckerConfig::action`]: holdfast_config::checker::CheckerConfig::action
//!
//! - [`Smoother`] (sans-IO): a probe result becomes a verdict change only
//!   after `down_after` failures / `up_after` successes in a row.
//! - [`Probe`]: one test per kind — `/proc` scan ([`ProcessProbe`]), TCP
//!   connect and optional request/answer ([`TcpProbe`]), ICMP echo over a
//!   raw socket ([`PingProbe`]), link flags by netlink ([`InterfaceProbe`]),
//!   the user's executable ([`CustomProbe`]), a module's state through
//!   [`ModuleStates`] ([`ModuleProbe`]).
//! - [`Runner`]: a tokio task per checker, sending a [`CheckerEvent`] on an
//!   mpsc channel each time a verdict changes, with the reason
//!   ("tcp 198.18.0.12:5432: Connection refused (os error 111) (3 probes in
//!   a row)").
//!
//! Network probes (ping socket, interface listing, TCP connect) and the
//! [`ProcessScope::CallerNetns`] scope work in the network namespace of the
//! thread that builds and runs them, which lets lab tests run a whole
//! runtime "on" one host.

mod error;
mod probe;
mod runner;
mod verdict;

pub use error::CheckerError;
pub use probe::custom::CustomProbe;
pub use probe::interface::{find_interface, link_verdict, InterfaceProbe, LinkFlags};
pub use probe::module::{ModuleJudge, ModuleProbe, ModuleStates, ModuleStatus};
pub use probe::ping::{checksum, echo_request, parse_echo_reply, PingProbe};
pub use probe::process::{
    count_processes, count_verdict, ProcessMatcher, ProcessProbe, ProcessScope,
};
pub use probe::tcp::TcpProbe;
pub use probe::{AnyProbe, Probe, ProbeContext};
pub use runner::{CheckerEvent, Runner};
pub use verdict::{Smoother, Verdict};
