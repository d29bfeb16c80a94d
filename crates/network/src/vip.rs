//! Virtual IP of a mirror module: the address is added by netlink on the
//! primary's interface and removed on stop, both idempotent, because the
//! daemon re-applies its intent after a restart or a failed step without
//! knowing what a previous run already did.
//!
//! Every call opens its own netlink socket in the calling thread's network
//! namespace, so a thread that entered a host's namespace (the lab, or a
//! daemon started inside one) acts on that host.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{NetworkError, Result};
use crate::netlink::{check_interface_name, Route};

/// Virtual IP operations (associated functions: the address lives in the
/// kernel, this type holds no state).
#[derive(Debug)]
pub struct Vip;

impl Vip {
    /// Adds `addr/prefix_len` to `interface`. Already present (same address
    /// and prefix on that interface): success, nothing changes.
    pub fn add(interface: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        check_prefix(addr, prefix_len)?;
        let operation = format!("adding {addr}/{prefix_len} to {interface}");
        let mut route = Route::open(&operation)?;
        let link = route.link_by_name(interface)?;
        let message = address_message(link.index, addr, prefix_len);
        match route.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
            &operation,
        )? {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(NetworkError::Netlink { operation, source }),
        }
    }

    /// Removes `addr/prefix_len` from `interface`. Absent: success, nothing
    /// changes. The prefix must match, so a node's own address that happens
    /// to equal the VIP with another prefix is never taken away.
    pub fn remove(interface: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        check_prefix(addr, prefix_len)?;
        let operation = format!("removing {addr}/{prefix_len} from {interface}");
        let mut route = Route::open(&operation)?;
        let link = route.link_by_name(interface)?;
        let message = address_message(link.index, addr, prefix_len);
        match route.request(RouteNetlinkMessage::DelAddress(message), 0, &operation)? {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(source) => Err(NetworkError::Netlink { operation, source }),
        }
    }

    /// Whether `interface` has the address `addr` (with any prefix).
    /// An error (unknown interface, netlink failure) is not a "no": the
    /// caller must not conclude the address is free from a failed look-up.
    pub fn holds(interface: &str, addr: Ipv4Addr) -> Result<bool> {
        let operation = format!("listing the addresses of {interface}");
        let mut route = Route::open(&operation)?;
        let link = route.link_by_name(interface)?;
        Ok(route
            .ipv4_addresses(&operation)?
            .iter()
            .any(|entry| entry.index == link.index && entry.addr == addr))
    }

    /// Every IPv4 address of this host (of the calling thread's network
    /// namespace), listed by netlink as the virtual IP's own calls do:
    /// `holdfast doctor` checks both at once.
    pub fn host_addresses() -> Result<Vec<Ipv4Addr>> {
        let operation = "listing the host's addresses";
        let mut route = Route::open(operation)?;
        Ok(route
            .ipv4_addresses(operation)?
            .into_iter()
            .map(|entry| entry.addr)
            .collect())
    }

    /// The interface to put `addr` on when the configuration names none: the
    /// one interface with an address of its own (not `addr` itself) whose
    /// subnet contains `addr`. None or several is an error asking for the
    /// interface to be configured.
    pub fn interface_for(addr: Ipv4Addr) -> Result<String> {
        let operation = format!("finding the interface for {addr}");
        let mut route = Route::open(&operation)?;
        let mut indexes: Vec<u32> = route
            .ipv4_addresses(&operation)?
            .into_iter()
            .filter(|entry| entry.addr != addr && in_subnet(addr, entry.addr, entry.prefix_len))
            .map(|entry| entry.index)
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut names = Vec::with_capacity(indexes.len());
        for index in indexes {
            names.push(route.link_by_index(index)?.name);
        }
        match names.len() {
            0 => Err(NetworkError::NoInterfaceInSubnet { addr }),
            1 => Ok(names.remove(0)),
            _ => Err(NetworkError::AmbiguousInterface {
                addr,
                interfaces: names,
            }),
        }
    }
}

/// Refuses prefixes above 32 before anything is sent; the kernel would
/// answer a bare `EINVAL`.
fn check_prefix(addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
    if prefix_len <= 32 {
        Ok(())
    } else {
        Err(NetworkError::InvalidPrefix { addr, prefix_len })
    }
}

/// Whether `addr` lies in the subnet `network/prefix_len`. A /0 contains
/// everything; `checked_shl` covers it (a shift by 32 overflows).
pub(crate) fn in_subnet(addr: Ipv4Addr, network: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    u32::from(addr) & mask == u32::from(network) & mask
}

/// The message `ip addr add addr/prefix dev <index>` sends: `IFA_LOCAL` is
/// the address, `IFA_ADDRESS` the same on a broadcast link, and the kernel
/// matches both plus the prefix when deleting.
fn address_message(index: u32, addr: Ipv4Addr, prefix_len: u8) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.prefix_len = prefix_len;
    message.header.scope = AddressScope::Universe;
    message.header.index = index;
    message
        .attributes
        .push(AddressAttribute::Local(IpAddr::V4(addr)));
    message
        .attributes
        .push(AddressAttribute::Address(IpAddr::V4(addr)));
    message
}

/// Whether `name` could be an interface name (for configuration checks,
/// without asking the kernel).
pub fn valid_interface_name(name: &str) -> bool {
    check_interface_name(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let vip = Ipv4Addr::new(198, 18, 0, 50);
        assert!(in_subnet(vip, Ipv4Addr::new(198, 18, 0, 11), 24));
        assert!(!in_subnet(vip, Ipv4Addr::new(198, 18, 1, 11), 24));
        assert!(in_subnet(vip, Ipv4Addr::new(198, 19, 1, 11), 15));
        assert!(in_subnet(vip, Ipv4Addr::new(1, 2, 3, 4), 0));
        assert!(in_subnet(vip, vip, 32));
        assert!(!in_subnet(vip, Ipv4Addr::new(198, 18, 0, 51), 32));
    }

    #[test]
    fn interface_names() {
        assert!(valid_interface_name("eth0"));
        assert!(valid_interface_name("a23456789012345"));
        for bad in [
            "",
            ".",
            "..",
            "a234567890123456",
            "eth/0",
            "eth0:1",
            "eth 0",
        ] {
            assert!(!valid_interface_name(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefix_above_32_is_refused_before_any_request() {
        let err = Vip::add("eth0", Ipv4Addr::new(198, 18, 0, 50), 33).unwrap_err();
        assert!(
            matches!(err, NetworkError::InvalidPrefix { prefix_len: 33, .. }),
            "{err}"
        );
    }
}
