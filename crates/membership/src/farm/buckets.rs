//! Which node owns which of the 256 traffic buckets of a farm, pure (no
//! I/O): the nftables filter of `holdfast-network` keeps a node's own.
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

use std::collections::BTreeSet;

/// Number of traffic buckets (the `mod 256` of the filter).
pub const BUCKETS: usize = 256;

/// Why a bucket assignment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
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
    pub fn assign(members: &[Member]) -> Result<BucketMap, BucketError> {
        let mut sorted: Vec<&Member> = members.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        if sorted.is_empty() {
            return Err(BucketError::NoMembers);
        }
        if let Some(pair) = sorted.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(BucketError::DuplicateMember {
                name: pair[0].name.clone(),
            });
        }
        let powers: Vec<u64> = sorted.iter().map(|m| u64::from(m.power)).collect();
        let mut remaining = quotas(&powers).ok_or_else(|| BucketError::NoPower {
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
        assert_eq!(BucketMap::assign(&[]), Err(BucketError::NoMembers));
        assert!(matches!(
            BucketMap::assign(&members(&[("a", 0), ("b", 0)])),
            Err(BucketError::NoPower { .. })
        ));
        assert_eq!(
            BucketMap::assign(&members(&[("a", 1), ("b", 1), ("a", 2)])),
            Err(BucketError::DuplicateMember { name: "a".into() })
        );
    }
}
