//! Farm groundwork, pure (no I/O): which node owns which of the 256 traffic
//! buckets, and the nftables filter that keeps a node's own buckets.
//!
//! # Bucket ownership
//!
//! Every node must compute the same owner for every bucket from the same
//! membership, with no other shared state: a rebalance computed from "the
//! previous assignment" would diverge as soon as two nodes saw different
//! membership histories (one missed a short-lived change), and two nodes
//! would then serve, or neither would serve, some clients. So the
//! assignment is a pure function of the set of UP members and their powers:
//!
//! 1. **Quotas** by the largest-remainder method: member `i` gets
//!    `floor(256 * power_i / total)` buckets, and the buckets left over go
//!    one each to the largest remainders (ties: name order). Each member's
//!    count is its exact share rounded down or up (within ±1), and a member
//!    of power 0 gets none (SafeKit's meaning of power 0).
//! 2. **Placement** by rendezvous (highest-random-weight) hashing with
//!    capacities: every (bucket, member) pair gets a score from a fixed
//!    integer hash of the member's name and the bucket; pairs are taken in
//!    descending score order and a bucket goes to the member of the first
//!    pair whose bucket is still free and whose quota is not yet filled.
//!    Scores do not depend on who else is a member, so a join or a leave
//!    only moves the buckets the newcomer outranks or the leaver held, plus
//!    a few (measured by the tests) to even the quotas out, instead of the
//!    wholesale reshuffle of `hash mod N`.
//!
//! Integer-only arithmetic (FNV-1a and the SplitMix64 finaliser) keeps the
//! answer identical on every machine: floating-point weighted scores (`-w /
//! ln(u)`) could order two near-equal scores differently on two libms.
//! Weights are enforced by the quotas, so the score needs none.
//!
//! # Filter
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

use crate::garp::Mac;
use crate::netlink::check_interface_name;

/// Number of traffic buckets (the `mod 256` of the filter).
pub const BUCKETS: usize = 256;

/// Why a farm computation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FarmError {
    /// No UP member at all.
    #[error("bucket assignment: no member is up")]
    NoMembers,
    /// Every UP member has power 0, so nobody may take traffic.
    #[error("bucket assignment: every up member has power 0 ({})", members.join(", "))]
    NoPower {
        /// The members.
        members: Vec<String>,
    },
    /// The same name twice in the membership.
    #[error("bucket assignment: member {name:?} listed twice")]
    DuplicateMember {
        /// The repeated name.
        name: String,
    },
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

/// An UP member of the farm and its relative power (traffic weight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node name, as in the cluster configuration.
    pub name: String,
    /// Relative weight; 0 means no traffic.
    pub power: u32,
}

impl Member {
    /// A member named `name` with `power`.
    pub fn new(name: impl Into<String>, power: u32) -> Member {
        Member {
            name: name.into(),
            power,
        }
    }
}

/// The owner of each of the [`BUCKETS`] buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketMap {
    /// Member names, sorted.
    names: Vec<String>,
    /// Index into `names` for each bucket.
    owners: Vec<usize>,
}

impl BucketMap {
    /// Assigns the buckets among `members` (in any order: the answer only
    /// depends on the set). See the module documentation for the method.
    pub fn assign(members: &[Member]) -> Result<BucketMap, FarmError> {
        let mut sorted: Vec<&Member> = members.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        if sorted.is_empty() {
            return Err(FarmError::NoMembers);
        }
        if let Some(pair) = sorted.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(FarmError::DuplicateMember {
                name: pair[0].name.clone(),
            });
        }
        let powers: Vec<u64> = sorted.iter().map(|m| u64::from(m.power)).collect();
        let mut remaining = quotas(&powers).ok_or_else(|| FarmError::NoPower {
            members: sorted.iter().map(|m| m.name.clone()).collect(),
        })?;

        let mut pairs = Vec::with_capacity(BUCKETS * sorted.len());
        for (member, m) in sorted.iter().enumerate() {
            if remaining[member] == 0 {
                continue;
            }
            let seed = fnv1a(m.name.as_bytes());
            for bucket in 0..BUCKETS {
                pairs.push((score(seed, bucket), member, bucket));
            }
        }
        // Highest score first; equal scores (vanishingly rare) by member
        // name order then bucket, so the order is total.
        pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

        let mut owners = vec![None; BUCKETS];
        let mut free = BUCKETS;
        for (_, member, bucket) in pairs {
            if free == 0 {
                break;
            }
            if owners[bucket].is_none() && remaining[member] > 0 {
                owners[bucket] = Some(member);
                remaining[member] -= 1;
                free -= 1;
            }
        }
        Ok(BucketMap {
            names: sorted.iter().map(|m| m.name.clone()).collect(),
            // Quotas add up to BUCKETS and every member with a quota has a
            // pair for every bucket, so the greedy pass fills every bucket.
            owners: owners
                .into_iter()
                .map(|o| o.expect("quotas add up to BUCKETS"))
                .collect(),
        })
    }

    /// The member owning `bucket`.
    pub fn owner(&self, bucket: u8) -> &str {
        &self.names[self.owners[usize::from(bucket)]]
    }

    /// The buckets `name` owns (empty for a non-member).
    pub fn buckets_of(&self, name: &str) -> BTreeSet<u8> {
        let Ok(member) = self.names.binary_search_by(|n| n.as_str().cmp(name)) else {
            return BTreeSet::new();
        };
        (0..=u8::MAX)
            .filter(|&b| self.owners[usize::from(b)] == member)
            .collect()
    }
}

/// Largest-remainder quotas of [`BUCKETS`] for `powers`; `None` when they
/// are all 0.
fn quotas(powers: &[u64]) -> Option<Vec<usize>> {
    let total: u64 = powers.iter().sum();
    if total == 0 {
        return None;
    }
    let buckets = BUCKETS as u64;
    // power <= u32::MAX, so power * 256 and the total of at most a few
    // thousand members fit in u64.
    let mut quotas: Vec<usize> = powers
        .iter()
        .map(|p| (p * buckets / total) as usize)
        .collect();
    let given: usize = quotas.iter().sum();
    let mut by_remainder: Vec<usize> = (0..powers.len()).collect();
    // Stable sort: equal remainders keep name order.
    by_remainder
        .sort_by(|&a, &b| (powers[b] * buckets % total).cmp(&(powers[a] * buckets % total)));
    for &member in by_remainder.iter().take(BUCKETS - given) {
        quotas[member] += 1;
    }
    Some(quotas)
}

/// FNV-1a, 64 bits: a fixed, documented hash of member names (std's
/// hashers may change between Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Rendezvous score of `bucket` for the member whose name hashes to `seed`:
/// the SplitMix64 finaliser spreads the bucket number over all 64 bits.
fn score(seed: u64, bucket: usize) -> u64 {
    let mut z = seed ^ (bucket as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Transport protocol of a load-balancing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// What the bucket of a packet is computed from (SafeKit's `filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// The client's IP address: a client always reaches the same node
    /// (SafeKit `on_addr`).
    ClientIp,
    /// The client's IP address and source port: each connection on its own
    /// (SafeKit `on_port`).
    ClientIpPort,
}

/// A load-balancing rule: traffic to the VIP with this protocol (and
/// destination port, or any) is split by `balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination port on the VIP; `None` for every port.
    pub port: Option<u16>,
    /// Hash input.
    pub balance: Balance,
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
    ) -> Result<FarmFilter, FarmError> {
        let mut chars = table.chars();
        let identifier = table.len() <= MAX_TABLE
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(FarmError::InvalidTable {
                table: table.to_string(),
            });
        }
        // The name is quoted in the script: no quote or backslash either.
        if check_interface_name(interface).is_err() || interface.contains(['"', '\\']) {
            return Err(FarmError::InvalidInterface {
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
            let protocol = rule.protocol.nft();
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

/// `aa:bb:cc:dd:ee:ff`, as nft writes MAC addresses.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(&str, u32)]) -> Vec<Member> {
        spec.iter().map(|&(n, p)| Member::new(n, p)).collect()
    }

    fn equal(n: usize) -> Vec<Member> {
        (1..=n)
            .map(|i| Member::new(format!("node{i}"), 1))
            .collect()
    }

    fn counts(map: &BucketMap, members: &[Member]) -> Vec<usize> {
        members
            .iter()
            .map(|m| map.buckets_of(&m.name).len())
            .collect()
    }

    fn moved(a: &BucketMap, b: &BucketMap) -> usize {
        (0..=u8::MAX).filter(|&k| a.owner(k) != b.owner(k)).count()
    }

    /// Each member's count is its exact share rounded down or up.
    fn assert_fair(members: &[Member]) {
        let map = BucketMap::assign(members).unwrap();
        let total: u64 = members.iter().map(|m| u64::from(m.power)).sum();
        for (m, count) in members.iter().zip(counts(&map, members)) {
            let exact = BUCKETS as f64 * m.power as f64 / total as f64;
            assert!(
                (count as f64 - exact).abs() < 1.0,
                "{} (power {}) has {count} buckets, share {exact:.2}",
                m.name,
                m.power
            );
        }
        let all: usize = counts(&map, members).iter().sum();
        assert_eq!(all, BUCKETS);
    }

    #[test]
    fn equal_powers_share_evenly() {
        for n in 1..=12 {
            assert_fair(&equal(n));
        }
        let map = BucketMap::assign(&equal(2)).unwrap();
        assert_eq!(counts(&map, &equal(2)), vec![128, 128]);
    }

    #[test]
    fn powers_weigh_the_shares() {
        assert_fair(&members(&[("a", 1), ("b", 3)]));
        assert_fair(&members(&[("a", 1), ("b", 2), ("c", 7)]));
        assert_fair(&members(&[("a", 5), ("b", 0), ("c", 5)]));
        assert_fair(&members(&[("a", u32::MAX), ("b", u32::MAX), ("c", 1)]));
        // SafeKit's chain high availability: powers 1, 64, 64*64.
        let chain = members(&[("a", 1), ("b", 64), ("c", 64 * 64)]);
        assert_fair(&chain);
        let map = BucketMap::assign(&chain).unwrap();
        assert_eq!(counts(&map, &chain), vec![0, 4, 252]);
    }

    #[test]
    fn power_zero_gets_nothing() {
        let ms = members(&[("a", 0), ("b", 1)]);
        let map = BucketMap::assign(&ms).unwrap();
        assert!(map.buckets_of("a").is_empty());
        assert_eq!(map.buckets_of("b").len(), BUCKETS);
        assert!(map.buckets_of("nobody").is_empty());
    }

    #[test]
    fn the_answer_depends_only_on_the_set() {
        let ms = members(&[("alpha", 3), ("bravo", 1), ("charlie", 2), ("delta", 2)]);
        let reference = BucketMap::assign(&ms).unwrap();
        let mut reversed = ms.clone();
        reversed.reverse();
        assert_eq!(BucketMap::assign(&reversed).unwrap(), reference);
        let mut rotated = ms.clone();
        rotated.rotate_left(2);
        assert_eq!(BucketMap::assign(&rotated).unwrap(), reference);
    }

    #[test]
    fn known_answer_pins_the_algorithm() {
        // Every node must run the same algorithm: this pins a few owners so
        // an accidental change (hash, tie-break) fails here, not in a mixed
        // cluster where two versions would split traffic differently.
        let map = BucketMap::assign(&equal(3)).unwrap();
        let owners: Vec<&str> = [0u8, 1, 2, 3, 127, 255]
            .iter()
            .map(|&b| map.owner(b))
            .collect();
        assert_eq!(owners, KNOWN_OWNERS);
    }

    const KNOWN_OWNERS: [&str; 6] = ["node1", "node3", "node1", "node3", "node3", "node1"];

    /// Buckets moved by a membership change, against the least possible
    /// (the leaver's buckets, or the joiner's share), over many memberships.
    #[derive(Default)]
    struct Movement {
        moved: usize,
        minimum: usize,
        worst: f64,
    }

    impl Movement {
        fn record(&mut self, before: &BucketMap, after: &BucketMap, minimum: usize) {
            let m = moved(before, after);
            assert!(m >= minimum, "{m} moved, below the minimum {minimum}");
            // `hash mod N` would move about (1 - 1/N) of all 256 buckets.
            assert!(m <= 2 * minimum + 4, "{m} moved, minimum {minimum}");
            self.moved += m;
            self.minimum += minimum;
            self.worst = self.worst.max(m as f64 / minimum as f64);
        }

        fn assert_close(&self, what: &str) {
            let ratio = self.moved as f64 / self.minimum as f64;
            eprintln!(
                "{what}: moved/minimum {ratio:.3} overall, {:.3} worst",
                self.worst
            );
            assert!(ratio <= MOVEMENT_RATIO, "{what}: moved/minimum {ratio:.3}");
        }
    }

    /// Bound on all buckets moved / least possible over a test's cases;
    /// measured 1.15 (joins) and 1.22 (leaves): the capacity pass re-evens
    /// the quotas with a few extra moves.
    const MOVEMENT_RATIO: f64 = 1.3;

    fn named(prefix: &str, n: usize, power: impl Fn(usize) -> u32) -> Vec<Member> {
        (1..=n)
            .map(|i| Member::new(format!("{prefix}{i}"), power(i)))
            .collect()
    }

    #[test]
    fn leaving_moves_little_more_than_the_leavers_buckets() {
        let mut movement = Movement::default();
        for prefix in ["node", "srv-", "paris-"] {
            for n in 2..=12 {
                for all in [
                    named(prefix, n, |_| 1),
                    named(prefix, n, |i| 1 + (i % 3) as u32),
                ] {
                    let before = BucketMap::assign(&all).unwrap();
                    for leaver in 0..n {
                        let mut rest = all.clone();
                        let gone = rest.remove(leaver);
                        let after = BucketMap::assign(&rest).unwrap();
                        movement.record(&before, &after, before.buckets_of(&gone.name).len());
                    }
                }
            }
        }
        movement.assert_close("leave");
    }

    #[test]
    fn joining_moves_little_more_than_the_joiners_share() {
        let mut movement = Movement::default();
        for prefix in ["node", "srv-", "paris-"] {
            for n in 1..=12 {
                for power in [1, 2, 3] {
                    let before_members = named(prefix, n, |_| 2);
                    let before = BucketMap::assign(&before_members).unwrap();
                    let mut with = before_members.clone();
                    with.push(Member::new("joiner", power));
                    let after = BucketMap::assign(&with).unwrap();
                    movement.record(&before, &after, after.buckets_of("joiner").len());
                }
            }
        }
        movement.assert_close("join");
    }

    #[test]
    fn refusals() {
        assert_eq!(BucketMap::assign(&[]), Err(FarmError::NoMembers));
        assert!(matches!(
            BucketMap::assign(&members(&[("a", 0), ("b", 0)])),
            Err(FarmError::NoPower { .. })
        ));
        assert_eq!(
            BucketMap::assign(&members(&[("a", 1), ("b", 1), ("a", 2)])),
            Err(FarmError::DuplicateMember { name: "a".into() })
        );
    }

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
        assert!(matches!(bad_table, Err(FarmError::InvalidTable { .. })));
        assert!(FarmFilter::new("9web", "eth0", VIP, VMAC, vec![]).is_err());
        assert!(FarmFilter::new("", "eth0", VIP, VMAC, vec![]).is_err());
        let bad_if = FarmFilter::new("web", "eth\"0", VIP, VMAC, vec![]);
        assert!(matches!(bad_if, Err(FarmError::InvalidInterface { .. })));
        assert!(FarmFilter::new("web", "", VIP, VMAC, vec![]).is_err());
    }
}
