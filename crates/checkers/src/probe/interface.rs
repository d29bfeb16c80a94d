//! Interface checker: the interface's flags from `getifaddrs` (netlink),
//! which, unlike `/sys/class/net`, always describe the caller's network
//! namespace — sysfs shows the namespace it was mounted in.

use std::net::IpAddr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

use super::Probe;
use crate::verdict::Verdict;
use holdfast_config::checker::InterfaceTarget;

/// What one interface looks like to the checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFlags {
    /// Administratively up (`ip link set up`).
    pub up: bool,
    /// Operationally up: RFC 2863 "up", which needs the carrier.
    pub running: bool,
    /// Carrier present (the cable, or the veth peer, is up).
    pub lower_up: bool,
}

/// The verdict for an interface's flags (`what` names it in the reason).
pub fn link_verdict(what: &str, flags: LinkFlags) -> Verdict {
    if !flags.up {
        Verdict::Down(format!("{what}: administratively down"))
    } else if !flags.lower_up {
        Verdict::Down(format!("{what}: no carrier (link down)"))
    } else if !flags.running {
        Verdict::Down(format!("{what}: carrier present but not operational"))
    } else {
        Verdict::Up
    }
}

fn to_flags(flags: InterfaceFlags) -> LinkFlags {
    LinkFlags {
        up: flags.contains(InterfaceFlags::IFF_UP),
        running: flags.contains(InterfaceFlags::IFF_RUNNING),
        lower_up: flags.contains(InterfaceFlags::IFF_LOWER_UP),
    }
}

/// Name and flags of the interface `target` designates, `Ok(None)` when
/// there is none.
pub fn find_interface(target: &InterfaceTarget) -> nix::Result<Option<(String, LinkFlags)>> {
    for ifaddr in getifaddrs()? {
        let matches = match target {
            InterfaceTarget::Name(name) => &ifaddr.interface_name == name,
            InterfaceTarget::Address(address) => {
                let holds = ifaddr.address.as_ref().and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                });
                holds == Some(*address)
            }
        };
        if matches {
            return Ok(Some((ifaddr.interface_name, to_flags(ifaddr.flags))));
        }
    }
    Ok(None)
}

/// Probe of an interface checker.
#[derive(Debug)]
pub struct InterfaceProbe {
    target: InterfaceTarget,
}

impl InterfaceProbe {
    pub fn new(target: InterfaceTarget) -> Self {
        Self { target }
    }

    fn check(&self) -> Verdict {
        match find_interface(&self.target) {
            Ok(Some((name, flags))) => link_verdict(&format!("interface {name}"), flags),
            Ok(None) => Verdict::Down(match &self.target {
                InterfaceTarget::Name(name) => format!("interface {name}: not found"),
                InterfaceTarget::Address(a) => format!("interface with {a}: no interface holds it"),
            }),
            Err(e) => Verdict::Down(format!("interfaces: listing them: {e}")),
        }
    }
}

impl Probe for InterfaceProbe {
    /// Synchronous on purpose: one netlink dump answered by the local
    /// kernel, and it must run on the caller's thread to see the caller's
    /// network namespace.
    async fn probe(&mut self) -> Verdict {
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_to_verdict() {
        let all = LinkFlags {
            up: true,
            running: true,
            lower_up: true,
        };
        assert_eq!(link_verdict("interface eth0", all), Verdict::Up);
        let verdict = link_verdict("interface eth0", LinkFlags { up: false, ..all });
        assert_eq!(
            verdict,
            Verdict::Down("interface eth0: administratively down".into())
        );
        let verdict = link_verdict(
            "interface eth0",
            LinkFlags {
                running: false,
                lower_up: false,
                ..all
            },
        );
        assert_eq!(
            verdict,
            Verdict::Down("interface eth0: no carrier (link down)".into())
        );
    }

    #[test]
    fn loopback_is_found_by_name_and_address() {
        let (name, flags) = find_interface(&InterfaceTarget::Name("lo".into()))
            .unwrap()
            .expect("every namespace has lo");
        assert_eq!(name, "lo");
        assert!(flags.up);
        let by_addr = find_interface(&InterfaceTarget::Address(IpAddr::from([127, 0, 0, 1])))
            .unwrap()
            .expect("lo holds 127.0.0.1");
        assert_eq!(by_addr.0, "lo");
        assert_eq!(
            find_interface(&InterfaceTarget::Name("hfnonexist0".into())).unwrap(),
            None
        );
    }
}
