//! holdfast-network: the kernel side of a module's virtual IP.
//!
//! - [`Vip`] (`vip.rs`): add, remove and check a virtual IP by netlink,
//!   idempotently, in the calling thread's network namespace; find the
//!   interface whose subnet contains it.
//! - [`garp::announce`] (`garp.rs`): gratuitous ARP after a VIP moves here,
//!   from an `AF_PACKET` socket.
//! - [`farm`] (`farm.rs`, pure): bucket ownership among a farm's UP nodes
//!   and the nftables ingress filter keeping a node's own buckets.
//!
//! Everything acts on the network namespace of the calling thread, so the
//! daemon (started inside a host's namespace) and tests (a thread that
//! entered a lab host's namespace) use the same calls. Needs
//! `CAP_NET_ADMIN` (addresses) and `CAP_NET_RAW` (ARP).

mod error;
pub mod farm;
pub mod garp;
mod netlink;
mod vip;

pub use error::{NetworkError, Result};
pub use vip::{valid_interface_name, Vip};
