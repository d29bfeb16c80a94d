//! holdfast-network: the kernel side of a module's virtual IP.
//!
//! - [`Vip`] (`vip.rs`): add, remove and check a virtual IP by netlink,
//!   idempotently, in the calling thread's network namespace; find the
//!   interface whose subnet contains it.
//! - [`garp::announce`] (`garp.rs`): gratuitous ARP after a VIP moves here,
//!   from an `AF_PACKET` socket.
//! - [`farm`] (`farm.rs`, pure): the nftables filter keeping a node's own
//!   buckets (which are its own is decided in `holdfast-membership`).
//! - [`FarmNode`] (`farm_node.rs`): a farm's VIP on this node — on `lo`,
//!   with `arp_ignore`; an ARP responder answering with the virtual MAC;
//!   the filter programmed through `nft -f`.
//!
//! Everything acts on the network namespace of the calling thread, so the
//! daemon (started inside a host's namespace) and tests (a thread that
//! entered a lab host's namespace) use the same calls. Needs
//! `CAP_NET_ADMIN` (addresses, nftables) and `CAP_NET_RAW` (ARP).

mod error;
pub mod farm;
mod farm_node;
pub mod garp;
mod netlink;
mod vip;

pub use error::{NetworkError, Result};
pub use farm_node::FarmNode;
pub use vip::{valid_interface_name, Vip};
