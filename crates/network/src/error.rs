//! Errors of the network crate: each names the operation and the interface
//! or address it was about, so a log line alone says what failed.

use std::io;
use std::net::Ipv4Addr;

/// What went wrong in a network operation.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A netlink request to the kernel failed (socket error, timeout, or an
    /// error code the kernel answered).
    #[error("netlink: {operation}: {source}")]
    Netlink {
        /// What was being asked, e.g. "adding 198.18.0.50/24 to eth0".
        operation: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("netlink: {operation}: undecodable answer: {detail}")]
    Decode {
        /// What was being asked.
        operation: String,
        /// The decoder's message.
        detail: String,
    },
    /// No interface of that name in the caller's network namespace.
    #[error("no network interface named {interface:?} in this network namespace")]
    NoSuchInterface {
        /// The name asked for.
        interface: String,
    },
    /// The name cannot be an interface name (empty, too long, or with a
    /// character the kernel refuses).
    #[error("{interface:?} is not a valid interface name (1 to 15 characters, no '/', ':' or whitespace)")]
    InvalidInterfaceName {
        /// The name given.
        interface: String,
    },
    /// An IPv4 prefix length above 32.
    #[error("prefix length /{prefix_len} of {addr} is not in 0..=32")]
    InvalidPrefix {
        /// The address it was given with.
        addr: Ipv4Addr,
        /// The prefix length given.
        prefix_len: u8,
    },
    /// No interface has an address whose subnet contains the virtual IP.
    #[error("no interface has an address in the same subnet as {addr}: name the interface in the configuration")]
    NoInterfaceInSubnet {
        /// The virtual IP.
        addr: Ipv4Addr,
    },
    /// Several interfaces have an address whose subnet contains the virtual IP.
    #[error("several interfaces have an address in the same subnet as {addr} ({}): name the interface in the configuration", interfaces.join(", "))]
    AmbiguousInterface {
        /// The virtual IP.
        addr: Ipv4Addr,
        /// The candidate interfaces.
        interfaces: Vec<String>,
    },
    /// Gratuitous ARP needs an Ethernet interface with a hardware address.
    #[error("interface {interface:?} is not an Ethernet interface with a hardware address: cannot announce {addr} by ARP")]
    NotEthernet {
        /// The interface.
        interface: String,
        /// The address to announce.
        addr: Ipv4Addr,
    },
    /// Sending on a raw packet socket failed.
    #[error("gratuitous ARP for {addr} on {interface}: {operation}: {source}")]
    Packet {
        /// The interface.
        interface: String,
        /// The announced address.
        addr: Ipv4Addr,
        /// The failing step ("opening a packet socket", "sending").
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    /// Writing a kernel setting failed.
    #[error("cannot set {path}: {source}")]
    Sysctl {
        /// The /proc/sys file.
        path: String,
        #[source]
        source: io::Error,
    },
    /// `nft -f` refused the farm's rules or could not run.
    #[error("nftables: {detail}")]
    Nft {
        /// nft's error output, or why it could not run.
        detail: String,
    },
}

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, NetworkError>;
