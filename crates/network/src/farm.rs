//! A farm's traffic filter, pure (no I/O): the nftables script that keeps
//! the buckets a node owns (which node owns which is decided by
//! `holdfast-membership`).
//!
//! [`FarmFilter::ruleset`] is the nftables script for one node (see
//! DESIGN.md, "Virtual IP through the kernel"): a netdev ingress hook on the
//! farm interface marks frames to the virtual MAC for this host (the stack
//! would otherwise drop them as addressed to another host); an ip prerouting
//! hook after conntrack keeps the connections this node already has, then
//! hashes each new client, with a seed fixed on every node (`jhash ip saddr`
//! for client-IP affinity, `jhash ip saddr . <proto> sport` for IP and
//! port), into 256 buckets and drops those this node does not own. A
//! membership change replaces both tables in one transaction; conntrack
//! entries live outside them, so open connections carry on.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use holdfast_config::{format_mac, Balance, Mac, Protocol, Rule};

use crate::netlink::check_interface_name;

/// Why a farm filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The nft table name is not an nft identifier.
    #[error("farm filter: table name {table:?} must be a letter followed by letters, digits or '_' (at most 64)")]
    InvalidTable {
        /// The name given.
        table: String,
    },
    /// The interface name cannot be an interface name.
    #[error("farm filter: {interface:?} is not a valid interface name")]
    InvalidInterface {
        /// The name given.
        interface: String,
    },
}

/// How nft names a rule's protocol.
fn nft_protocol(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// One node's ingress filter for one farm VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarmFilter {
    table: String,
    pub(crate) interface: String,
    pub(crate) vip: Ipv4Addr,
    pub(crate) vmac: Mac,
    rules: Vec<Rule>,
    /// Owned buckets expire unless programmed again within this time.
    expiry: Option<Duration>,
}

/// Seed of every `jhash`: without one the kernel draws a random seed per
/// rule, so two nodes would put the same client in different buckets (some
/// connections answered twice, others never: seen in the lab test).
const HASH_SEED: u32 = 0x486f_6c64;

/// Longest nft table name accepted (nft's NFT_NAME_MAXLEN is 256; a short
/// bound keeps names readable in `nft list`).
const MAX_TABLE: usize = 64;

impl FarmFilter {
    /// A filter in the netdev table `table` (one per farm module) on
    /// `interface`, for traffic to `vip` sent to the virtual MAC `vmac`.
    /// Names are checked here because they are spliced into nft syntax.
    pub fn new(
        table: &str,
        interface: &str,
        vip: Ipv4Addr,
        vmac: Mac,
        rules: Vec<Rule>,
    ) -> Result<FarmFilter, FilterError> {
        let mut chars = table.chars();
        let identifier = table.len() <= MAX_TABLE
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(FilterError::InvalidTable {
                table: table.to_string(),
            });
        }
        // The name is quoted in the script: no quote or backslash either.
        if check_interface_name(interface).is_err() || interface.contains(['"', '\\']) {
            return Err(FilterError::InvalidInterface {
                interface: interface.to_string(),
            });
        }
        Ok(FarmFilter {
            table: table.to_string(),
            interface: interface.to_string(),
            vip,
            vmac,
            rules,
            expiry: None,
        })
    }

    /// Owned buckets expire `after` their last programming: a node whose
    /// daemon died (kill -9) stops taking new clients by itself once its
    /// peers have noticed (their heartbeat timeout) and taken its buckets,
    /// instead of resetting the connections the kernel would still accept
    /// for an application that is gone. The owner programs again well
    /// within `after`.
    pub fn expiring(mut self, after: Duration) -> FarmFilter {
        self.expiry = Some(after);
        self
    }

    /// Both tables, for `nft -f -`: replaces any previous version of them
    /// in one transaction (declaring a table first makes its delete valid
    /// when it does not exist yet; nft 1.0.6 has no `destroy`).
    ///
    /// - `netdev` ingress on the interface: frames to the virtual MAC are
    ///   marked for this host (the stack drops them otherwise), and packets
    ///   to the VIP in a bucket outside `kept` are dropped at once: this node
    ///   never owned it, so it has no connection there, and conntrack (the
    ///   costly part, on every node for every packet) never sees them.
    /// - `ip` prerouting, after conntrack (-200): a connection this node
    ///   already has (established or related) stays here whoever owns its
    ///   bucket now, so a node joining takes no open connection away; any
    ///   other TCP segment but a SYN is dropped, so the new owner of a bucket
    ///   never answers another node's connection with a reset; then each
    ///   rule hashes the client into 256 buckets and keeps the `owned` ones.
    ///
    /// `kept` must contain `owned`: it is every bucket owned since the
    /// farm started here, whose connections may still be open. Traffic to
    /// the VIP that no rule matches (ping, other ports) is split by client
    /// IP, so exactly one node answers it rather than all.
    pub fn ruleset(&self, owned: &BTreeSet<u8>, kept: &BTreeSet<u8>) -> String {
        let vmac = format_mac(&self.vmac);
        let vip = self.vip;
        let mut script = self.removal();
        let _ = writeln!(script, "table netdev {} {{", self.table);
        bucket_set(&mut script, "kept", None, kept);
        script.push_str("  chain ingress {\n");
        let _ = writeln!(
            script,
            "    type filter hook ingress device \"{}\" priority -500; policy accept;",
            self.interface
        );
        let _ = writeln!(script, "    ether daddr {vmac} meta pkttype set host");
        self.bucket_rules(&mut script, "kept");
        script.push_str("  }\n}\n");
        let _ = writeln!(script, "table ip {} {{", self.table);
        bucket_set(&mut script, "owned", self.expiry, owned);
        script.push_str("  chain prerouting {\n");
        script.push_str("    type filter hook prerouting priority -150; policy accept;\n");
        // This node talking to its own VIP is none of the farm's business.
        let _ = writeln!(script, "    iif \"lo\" ip daddr {vip} accept");
        let _ = writeln!(
            script,
            "    ip daddr {vip} ct state established,related accept"
        );
        let _ = writeln!(
            script,
            "    ip daddr {vip} tcp flags & (fin|syn|rst|ack) != syn drop"
        );
        self.bucket_rules(&mut script, "owned");
        script.push_str("  }\n}\n");
        script
    }

    /// Each rule's hash of the client, keeping the buckets in `set`; the
    /// rest of the VIP's traffic by client IP.
    fn bucket_rules(&self, script: &mut String, set: &str) {
        let vip = self.vip;
        for rule in &self.rules {
            let protocol = nft_protocol(rule.protocol);
            let mut matched = format!("ip daddr {vip} meta l4proto {protocol}");
            if let Some(port) = rule.port {
                let _ = write!(matched, " {protocol} dport {port}");
            }
            let hash = match rule.balance {
                Balance::ClientIp => format!("jhash ip saddr mod 256 seed {HASH_SEED:#x}"),
                Balance::ClientIpPort => {
                    format!("jhash ip saddr . {protocol} sport mod 256 seed {HASH_SEED:#x}")
                }
            };
            // Kept: accept now, so the catch-all below never rehashes it.
            let _ = writeln!(script, "    {matched} {hash} @{set} accept");
            let _ = writeln!(script, "    {matched} drop");
        }
        let _ = writeln!(
            script,
            "    ip daddr {vip} jhash ip saddr mod 256 seed {HASH_SEED:#x} != @{set} drop"
        );
    }

    /// Removes both tables (farm stopped). Valid whether or not they exist.
    pub fn removal(&self) -> String {
        let mut script = String::new();
        for family in ["netdev", "ip"] {
            let table = format!("{family} {}", self.table);
            let _ = writeln!(script, "table {table} {{}}\ndelete table {table}");
        }
        script
    }
}

/// A set of buckets named `name`, its elements expiring after `expiry`.
fn bucket_set(script: &mut String, name: &str, expiry: Option<Duration>, buckets: &BTreeSet<u8>) {
    // A set of `typeof jhash ...` is what the hash yields, but nft 1.0.6
    // crashes listing such a set; numgen yields the same type (32-bit
    // integer, host byte order), so the lookup matches the same values.
    let _ = writeln!(script, "  set {name} {{\n    typeof numgen inc mod 256");
    if let Some(expiry) = expiry {
        let _ = writeln!(script, "    timeout {}ms", expiry.as_millis().max(1));
    }
    if !buckets.is_empty() {
        let _ = writeln!(script, "    elements = {{ {} }}", element_list(buckets));
    }
    script.push_str("  }\n");
}

fn element_list(owned: &BTreeSet<u8>) -> String {
    owned
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);
    const VMAC: Mac = [0x02, 0x48, 0x46, 0x00, 0x00, 0x2a];

    fn filter(rules: Vec<Rule>) -> FarmFilter {
        FarmFilter::new("holdfast_web", "eth0", VIP, VMAC, rules).unwrap()
    }

    #[test]
    fn ruleset_text() {
        let f = filter(vec![
            Rule {
                protocol: Protocol::Tcp,
                port: Some(80),
                balance: Balance::ClientIpPort,
            },
            Rule {
                protocol: Protocol::Udp,
                port: None,
                balance: Balance::ClientIp,
            },
        ]);
        let owned: BTreeSet<u8> = [0, 1, 7, 255].into();
        let kept: BTreeSet<u8> = [0, 1, 7, 9, 255].into();
        let expected = "\
table netdev holdfast_web {}
delete table netdev holdfast_web
table ip holdfast_web {}
delete table ip holdfast_web
table netdev holdfast_web {
  set kept {
    typeof numgen inc mod 256
    elements = { 0, 1, 7, 9, 255 }
  }
  chain ingress {
    type filter hook ingress device \"eth0\" priority -500; policy accept;
    ether daddr 02:48:46:00:00:2a meta pkttype set host
    ip daddr 198.18.0.50 meta l4proto tcp tcp dport 80 jhash ip saddr . tcp sport mod 256 seed 0x486f6c64 @kept accept
    ip daddr 198.18.0.50 meta l4proto tcp tcp dport 80 drop
    ip daddr 198.18.0.50 meta l4proto udp jhash ip saddr mod 256 seed 0x486f6c64 @kept accept
    ip daddr 198.18.0.50 meta l4proto udp drop
    ip daddr 198.18.0.50 jhash ip saddr mod 256 seed 0x486f6c64 != @kept drop
  }
}
table ip holdfast_web {
  set owned {
    typeof numgen inc mod 256
    elements = { 0, 1, 7, 255 }
  }
  chain prerouting {
    type filter hook prerouting priority -150; policy accept;
    iif \"lo\" ip daddr 198.18.0.50 accept
    ip daddr 198.18.0.50 ct state established,related accept
    ip daddr 198.18.0.50 tcp flags & (fin|syn|rst|ack) != syn drop
    ip daddr 198.18.0.50 meta l4proto tcp tcp dport 80 jhash ip saddr . tcp sport mod 256 seed 0x486f6c64 @owned accept
    ip daddr 198.18.0.50 meta l4proto tcp tcp dport 80 drop
    ip daddr 198.18.0.50 meta l4proto udp jhash ip saddr mod 256 seed 0x486f6c64 @owned accept
    ip daddr 198.18.0.50 meta l4proto udp drop
    ip daddr 198.18.0.50 jhash ip saddr mod 256 seed 0x486f6c64 != @owned drop
  }
}
";
        assert_eq!(f.ruleset(&owned, &kept), expected);
    }

    #[test]
    fn empty_ownership_declares_an_empty_set() {
        let text = filter(vec![]).ruleset(&BTreeSet::new(), &BTreeSet::new());
        assert!(!text.contains("elements"), "{text}");
        assert!(
            text.contains("set owned {\n    typeof numgen inc mod 256\n  }\n"),
            "{text}"
        );
    }

    #[test]
    fn owned_buckets_may_expire() {
        let text = filter(vec![])
            .expiring(Duration::from_millis(1500))
            .ruleset(&[4].into(), &[4].into());
        assert!(
            text.contains("typeof numgen inc mod 256\n    timeout 1500ms\n    elements = { 4 }\n"),
            "{text}"
        );
    }

    #[test]
    fn removal_deletes_both_tables() {
        assert_eq!(
            filter(vec![]).removal(),
            "table netdev holdfast_web {}\ndelete table netdev holdfast_web\ntable ip holdfast_web {}\ndelete table ip holdfast_web\n"
        );
    }

    #[test]
    fn names_spliced_into_nft_are_checked() {
        let bad_table = FarmFilter::new("web farm", "eth0", VIP, VMAC, vec![]);
        assert!(matches!(bad_table, Err(FilterError::InvalidTable { .. })));
        assert!(FarmFilter::new("9web", "eth0", VIP, VMAC, vec![]).is_err());
        assert!(FarmFilter::new("", "eth0", VIP, VMAC, vec![]).is_err());
        let bad_if = FarmFilter::new("web", "eth\"0", VIP, VMAC, vec![]);
        assert!(matches!(bad_if, Err(FilterError::InvalidInterface { .. })));
        assert!(FarmFilter::new("web", "", VIP, VMAC, vec![]).is_err());
    }
}
