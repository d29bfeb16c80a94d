//! Split-brain protection with a witness: bounded **leases**, sans-IO.
//!
//! The witness (`holdfast witness`, on a third machine) grants each module's
//! lease to one node at a time, for a duration the node asks for. It grants
//! it to another node only once the holder's lease has expired — counted
//! from the moment *it* granted it. The node counts its lease from the
//! moment it *sent* the request, which is earlier: its view of the lease
//! always ends first. A node whose application may run must have stopped it
//! before that view ends (see `mirror/keep.rs`, the *keep* rule), so the
//! other node, which starts only with a lease of its own, never overlaps it.
//!
//! - [`LeaseClient`]: the node side (requests, grants, the lease's end).
//! - [`WitnessCore`]: the witness's decisions.
//! - [`LeaseRequest`] / [`LeaseReply`]: the wire format, sealed like
//!   heartbeats (HMAC-SHA256 with the cluster key); requests carry
//!   `(incarnation, id)` for the witness's replay guard, replies echo them.
//!
//! A restarted witness remembers no lease, so it grants nothing for its
//! longest lease (`max_lease`): every lease it granted before has expired by then.
//!
//! **Fencing the peer's copy** (like DRBD's fence-peer handler): before a
//! primary acknowledges a change its peer does not receive (going ALONE),
//! it tells the witness, in a lease request, that the peer's copy is
//! outdated ([`PeerCopy::Outdated`]), and waits for the grant. From then
//! on the witness refuses the lease to that peer ([`LeaseDecision::Outdated`]),
//! even after the primary's lease ends, until the primary reports the
//! copy current again (resynchronised). Unlike leases, these marks outlive
//! a restart of the witness (its shell stores them), since forgetting one
//! would let a stale copy take over.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use holdfast_key::ClusterKey;
use serde::{Deserialize, Serialize};

use crate::datagram::{open, seal, DatagramError};

// Version 2: requests carry [`PeerCopy`], decisions may be `Outdated`.
const REQUEST_MAGIC: &[u8; 4] = b"HFQ2";
const REPLY_MAGIC: &[u8; 4] = b"HFR2";

/// Requests kept for matching grants: more than can be in flight.
const PENDING: usize = 32;

/// How a module uses its witness lease, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a grant lasts (asked of the witness in every request).
    pub duration: Duration,
    /// Interval between two requests while the lease is needed (the pulse).
    pub renew: Duration,
    /// The longest time from deciding to stop the application to the end of
    /// its forced stop: the longest script that may be running, then the
    /// graceful and forced `stop_prim` (each bounded by its timeout).
    pub stop_budget: Duration,
}

/// What a lease request says of the peer's copy of the replicated data.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PeerCopy {
    /// Nothing new (no replication, or it is being brought up to date).
    #[default]
    Unknown,
    /// The peer has every change: its copy may take over again.
    Current,
    /// This primary changes data `peer` does not receive: refuse it the
    /// lease until it is current again.
    Outdated { peer: String },
}

/// A request sent and not answered yet.
#[derive(Debug)]
struct Pending {
    id: u64,
    sent: Instant,
    /// The fencing epoch the request carried `Outdated` for, if any.
    fencing: Option<u64>,
}

/// The node side of the lease of one module.
#[derive(Debug)]
pub struct LeaseClient {
    settings: LeaseSettings,
    pending: VecDeque<Pending>,
    next_id: u64,
    last_request: Option<Instant>,
    /// This node's view of the end of its lease.
    valid_until: Option<Instant>,
    /// The holder named by the last refusal, to log a change only once.
    refused_by: Option<String>,
}

impl LeaseClient {
    pub fn new(settings: LeaseSettings) -> Self {
        Self {
            settings,
            pending: VecDeque::new(),
            next_id: 1,
            last_request: None,
            valid_until: None,
            refused_by: None,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// The id of a new request to send now, unless one was sent less than
    /// a renew interval ago. `fencing`: the request reports the peer's copy
    /// outdated as of that epoch (see [`Self::granted`]).
    pub fn request(&mut self, now: Instant, fencing: Option<u64>) -> Option<u64> {
        if self
            .last_request
            .is_some_and(|t| now < t + self.settings.renew)
        {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.last_request = Some(now);
        if self.pending.len() == PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            id,
            sent: now,
            fencing,
        });
        Some(id)
    }

    /// The next [`Self::request`] goes out at once (something to tell the
    /// witness cannot wait for the renew pace).
    pub fn hurry(&mut self) {
        self.last_request = None;
    }

    /// When the next request may be sent.
    pub fn next_request(&self) -> Option<Instant> {
        self.last_request.map(|t| t + self.settings.renew)
    }

    /// The witness granted request `id`: the lease runs until the request's
    /// send time plus the duration. Returns the fencing epoch the witness
    /// thereby recorded, if the request carried one. Nothing if `id` is
    /// unknown (answered already, or too old).
    pub fn granted(&mut self, id: u64) -> Option<u64> {
        let pos = self.pending.iter().position(|p| p.id == id)?;
        let Pending { sent, fencing, .. } = self.pending[pos];
        // Older requests can no longer extend the lease past this one.
        self.pending.drain(..=pos);
        let until = sent + self.settings.duration;
        self.valid_until = Some(self.valid_until.map_or(until, |v| v.max(until)));
        self.refused_by = None;
        fencing
    }

    /// The witness refused request `id` because `holder` holds the lease.
    /// True when this is news (another holder than last time) worth a log line.
    pub fn refused(&mut self, id: u64, holder: &str) -> bool {
        let Some(pos) = self.pending.iter().position(|p| p.id == id) else {
            return false;
        };
        self.pending.remove(pos);
        let news = self.refused_by.as_deref() != Some(holder);
        self.refused_by = Some(holder.to_string());
        news
    }

    /// The application is down: give the lease back (the id of a request
    /// for zero time, which the witness takes as a release), so that the
    /// peer need not wait for it to expire. Grants still in flight no
    /// longer count.
    pub fn release(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.clear();
        self.valid_until = None;
        id
    }

    /// The end of the lease as this node sees it.
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }
}

/// What the witness answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseDecision {
    Granted,
    /// `holder` holds the lease for `remaining_ms` more (or the witness
    /// restarted and grants nothing yet: `holder` says so).
    Refused {
        holder: String,
        remaining_ms: u64,
    },
    /// The request asked for more than the witness's `max_lease`.
    TooLong {
        max_ms: u64,
    },
    /// `by`, primary, changed data this node's copy lacks: it must not
    /// take over until `by` has resynchronised it.
    Outdated {
        by: String,
    },
}

/// A node whose copy of a module's replicated data is outdated, and the
/// primary that said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutdatedCopy {
    pub node: String,
    pub by: String,
    /// The stamp of `by`'s request that recorded it: only a newer request
    /// of `by` clears it. The witness's replay guard is in memory, so a
    /// request delayed across a restart of the witness could otherwise
    /// report the copy current long after it stopped being so. (Absent
    /// from files written before: any request of `by` clears those.)
    #[serde(default)]
    pub since: Stamp,
}

/// A request's `(incarnation, id)`: grows with every request of a node,
/// across its restarts.
pub type Stamp = (u64, u64);

/// The witness's memory: per module, who holds the lease and until when.
#[derive(Debug)]
pub struct WitnessCore {
    max_lease: Duration,
    /// Nothing is granted before this (a restart: earlier grants may live).
    quiet_until: Instant,
    holders: BTreeMap<String, (String, Instant)>,
    /// Per module: whose copy is outdated (kept across restarts by the shell).
    outdated: BTreeMap<String, OutdatedCopy>,
}

/// The holder named in refusals during the witness's start-up quiet time.
pub const RESTARTED: &str = "(witness restarted: no grant until every earlier lease expired)";

impl WitnessCore {
    /// A witness starting at `now`, with the outdated copies it recorded
    /// before.
    pub fn new(
        max_lease: Duration,
        now: Instant,
        outdated: BTreeMap<String, OutdatedCopy>,
    ) -> Self {
        Self {
            max_lease,
            quiet_until: now + max_lease,
            holders: BTreeMap::new(),
            outdated,
        }
    }

    /// `node` asks for the lease of `module` for `duration`; zero releases
    /// it (the holder's application is down). A grant also records what
    /// the request (`stamp`) says of the peer's copy.
    pub fn request(
        &mut self,
        now: Instant,
        module: &str,
        node: &str,
        stamp: Stamp,
        duration: Duration,
        peer_copy: &PeerCopy,
    ) -> LeaseDecision {
        if duration.is_zero() {
            if self.holders.get(module).is_some_and(|(h, _)| h == node) {
                self.holders.remove(module);
            }
            return LeaseDecision::Granted;
        }
        if duration > self.max_lease {
            return LeaseDecision::TooLong {
                max_ms: self.max_lease.as_millis() as u64,
            };
        }
        if let Some(copy) = self.outdated.get(module).filter(|c| c.node == node) {
            return LeaseDecision::Outdated {
                by: copy.by.clone(),
            };
        }
        if now < self.quiet_until {
            return LeaseDecision::Refused {
                holder: RESTARTED.into(),
                remaining_ms: (self.quiet_until - now).as_millis() as u64,
            };
        }
        match self.holders.get(module) {
            Some((holder, until)) if holder != node && now < *until => LeaseDecision::Refused {
                holder: holder.clone(),
                remaining_ms: (*until - now).as_millis() as u64,
            },
            _ => {
                self.holders
                    .insert(module.to_string(), (node.to_string(), now + duration));
                // What `node` said after this request outweighs it.
                let stale = self
                    .outdated
                    .get(module)
                    .is_some_and(|m| m.by == node && stamp <= m.since);
                match peer_copy {
                    PeerCopy::Unknown => {}
                    _ if stale => {}
                    PeerCopy::Current => {
                        self.outdated.remove(module);
                    }
                    PeerCopy::Outdated { peer } => {
                        self.outdated.insert(
                            module.to_string(),
                            OutdatedCopy {
                                node: peer.clone(),
                                by: node.to_string(),
                                since: stamp,
                            },
                        );
                    }
                }
                LeaseDecision::Granted
            }
        }
    }

    /// The outdated copies, to store before answering a request that
    /// changed them.
    pub fn outdated(&self) -> &BTreeMap<String, OutdatedCopy> {
        &self.outdated
    }

    /// Who holds `module`'s lease now.
    pub fn holder(&self, now: Instant, module: &str) -> Option<&str> {
        self.holders
            .get(module)
            .filter(|(_, until)| now < *until)
            .map(|(holder, _)| holder.as_str())
    }
}

/// A node asks the witness for a module's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub module: String,
    pub node: String,
    pub incarnation: u64,
    /// Grows with every request of this incarnation.
    pub id: u64,
    pub duration_ms: u64,
    pub peer_copy: PeerCopy,
}

/// The witness's answer to one [`LeaseRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReply {
    pub module: String,
    pub node: String,
    pub incarnation: u64,
    pub id: u64,
    pub decision: LeaseDecision,
}

impl LeaseRequest {
    pub fn encode(&self, key: &ClusterKey) -> Vec<u8> {
        seal(REQUEST_MAGIC, self, key)
    }

    pub fn decode(datagram: &[u8], key: &ClusterKey) -> Result<Self, DatagramError> {
        open(REQUEST_MAGIC, datagram, key)
    }
}

impl LeaseReply {
    pub fn encode(&self, key: &ClusterKey) -> Vec<u8> {
        seal(REPLY_MAGIC, self, key)
    }

    pub fn decode(datagram: &[u8], key: &ClusterKey) -> Result<Self, DatagramError> {
        open(REPLY_MAGIC, datagram, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn settings() -> LeaseSettings {
        LeaseSettings {
            duration: 1000 * MS,
            renew: 100 * MS,
            stop_budget: 300 * MS,
        }
    }

    #[test]
    fn the_node_counts_from_sending_and_requests_at_the_renew_pace() {
        let t0 = Instant::now();
        let mut lease = LeaseClient::new(settings());
        let first = lease.request(t0, Some(1)).unwrap();
        assert_eq!(lease.request(t0 + 50 * MS, None), None);
        let second = lease.request(t0 + 100 * MS, Some(2)).unwrap();
        // The grant of the second arrives first; the first's is then stale.
        assert_eq!(lease.granted(second), Some(2), "its fencing epoch");
        assert_eq!(lease.valid_until(), Some(t0 + 1100 * MS));
        assert_eq!(lease.granted(first), None);
        assert_eq!(lease.valid_until(), Some(t0 + 1100 * MS));
        assert_eq!(lease.granted(second), None, "a replayed grant is ignored");
        // Hurried: the next request goes out before the renew pace.
        assert_eq!(lease.request(t0 + 150 * MS, None), None);
        lease.hurry();
        assert!(lease.request(t0 + 150 * MS, None).is_some());
    }

    #[test]
    fn refusals_are_news_once_per_holder() {
        let t0 = Instant::now();
        let mut lease = LeaseClient::new(settings());
        let a = lease.request(t0, None).unwrap();
        let b = lease.request(t0 + 100 * MS, None).unwrap();
        assert!(lease.refused(a, "node1"));
        assert!(!lease.refused(b, "node1"));
        assert_eq!(lease.valid_until(), None);
    }

    #[test]
    fn the_witness_grants_another_node_only_after_expiry() {
        let t0 = Instant::now();
        let mut w = WitnessCore::new(2000 * MS, t0, BTreeMap::new());
        let after_quiet = t0 + 2000 * MS;
        assert!(matches!(
            w.request(t0, "web", "node1", (1, 0), 1000 * MS, &PeerCopy::Unknown),
            LeaseDecision::Refused { .. }
        ));
        assert_eq!(
            w.request(
                after_quiet,
                "web",
                "node1",
                (1, 0),
                1000 * MS,
                &PeerCopy::Unknown
            ),
            LeaseDecision::Granted
        );
        assert_eq!(
            w.request(
                after_quiet + 999 * MS,
                "web",
                "node2",
                (1, 0),
                1000 * MS,
                &PeerCopy::Unknown
            ),
            LeaseDecision::Refused {
                holder: "node1".into(),
                remaining_ms: 1
            }
        );
        // Renewal by the holder, another module is independent.
        assert_eq!(
            w.request(
                after_quiet + 500 * MS,
                "web",
                "node1",
                (1, 0),
                1000 * MS,
                &PeerCopy::Unknown
            ),
            LeaseDecision::Granted
        );
        assert_eq!(
            w.request(
                after_quiet + 500 * MS,
                "db",
                "node2",
                (1, 0),
                1000 * MS,
                &PeerCopy::Unknown
            ),
            LeaseDecision::Granted
        );
        assert_eq!(w.holder(after_quiet + 1499 * MS, "web"), Some("node1"));
        assert_eq!(
            w.request(
                after_quiet + 1500 * MS,
                "web",
                "node2",
                (1, 0),
                1000 * MS,
                &PeerCopy::Unknown
            ),
            LeaseDecision::Granted
        );
        assert_eq!(
            w.request(
                after_quiet,
                "web",
                "node1",
                (1, 0),
                2001 * MS,
                &PeerCopy::Unknown
            ),
            LeaseDecision::TooLong { max_ms: 2000 }
        );
        // Only the holder releases.
        let later = after_quiet + 1600 * MS;
        w.request(
            later,
            "web",
            "node1",
            (1, 0),
            Duration::ZERO,
            &PeerCopy::Unknown,
        );
        assert_eq!(w.holder(later, "web"), Some("node2"));
        w.request(
            later,
            "web",
            "node2",
            (1, 0),
            Duration::ZERO,
            &PeerCopy::Unknown,
        );
        assert_eq!(w.holder(later, "web"), None);
    }

    #[test]
    fn an_outdated_copy_is_refused_the_lease_until_reported_current() {
        let t0 = Instant::now();
        let mut w = WitnessCore::new(1000 * MS, t0, BTreeMap::new());
        let t = t0 + 1000 * MS;
        let outdated = PeerCopy::Outdated {
            peer: "node2".into(),
        };
        // Refused requests record nothing.
        assert!(matches!(
            w.request(t0, "web", "node1", (1, 0), 500 * MS, &outdated),
            LeaseDecision::Refused { .. }
        ));
        assert_eq!(
            w.request(t, "web", "node2", (1, 0), 500 * MS, &PeerCopy::Unknown),
            LeaseDecision::Granted
        );
        w.request(
            t,
            "web",
            "node2",
            (1, 0),
            Duration::ZERO,
            &PeerCopy::Unknown,
        );
        assert_eq!(
            w.request(t, "web", "node1", (1, 1), 500 * MS, &outdated),
            LeaseDecision::Granted
        );
        // node1's lease ends (a crash, a release): node2 stays refused.
        let later = t + 2000 * MS;
        assert_eq!(w.holder(later, "web"), None);
        let refused = LeaseDecision::Outdated { by: "node1".into() };
        assert_eq!(
            w.request(later, "web", "node2", (1, 0), 500 * MS, &PeerCopy::Unknown),
            refused
        );
        assert_eq!(
            w.request(later, "db", "node2", (1, 0), 500 * MS, &PeerCopy::Unknown),
            LeaseDecision::Granted,
            "per module"
        );
        // A restarted witness keeps the mark, and node1 may renew without news.
        let mut w = WitnessCore::new(1000 * MS, later, w.outdated().clone());
        let restarted = later + 1000 * MS;
        assert_eq!(
            w.request(
                restarted,
                "web",
                "node2",
                (1, 0),
                500 * MS,
                &PeerCopy::Unknown
            ),
            refused
        );
        assert_eq!(
            w.request(
                restarted,
                "web",
                "node1",
                (1, 2),
                500 * MS,
                &PeerCopy::Unknown
            ),
            LeaseDecision::Granted
        );
        assert_eq!(
            w.request(
                restarted,
                "web",
                "node2",
                (1, 0),
                500 * MS,
                &PeerCopy::Unknown
            ),
            refused
        );
        // Resynchronised: node1 says so, and node2 may take over after it.
        w.request(
            restarted,
            "web",
            "node1",
            (2, 1),
            500 * MS,
            &PeerCopy::Current,
        );
        assert!(w.outdated().is_empty());
        w.request(
            restarted,
            "web",
            "node1",
            (1, 0),
            Duration::ZERO,
            &PeerCopy::Unknown,
        );
        assert_eq!(
            w.request(
                restarted,
                "web",
                "node2",
                (1, 0),
                500 * MS,
                &PeerCopy::Unknown
            ),
            LeaseDecision::Granted
        );
    }

    #[test]
    fn only_a_newer_request_of_the_fencing_node_clears_its_mark() {
        let t0 = Instant::now();
        let mut w = WitnessCore::new(1000 * MS, t0, BTreeMap::new());
        let t = t0 + 1000 * MS;
        let outdated = PeerCopy::Outdated {
            peer: "node2".into(),
        };
        w.request(t, "web", "node1", (3, 7), 500 * MS, &outdated);
        // The witness restarts and forgets its replay guard; an older
        // request of node1, delayed in the network, arrives after its
        // quiet time: it neither clears the mark nor replaces it.
        let mut w = WitnessCore::new(1000 * MS, t, w.outdated().clone());
        let restarted = t + 2000 * MS;
        for stale in [(3, 6), (2, 99)] {
            assert_eq!(
                w.request(
                    restarted,
                    "web",
                    "node1",
                    stale,
                    500 * MS,
                    &PeerCopy::Current
                ),
                LeaseDecision::Granted
            );
            w.request(restarted, "web", "node1", stale, 500 * MS, &outdated);
            assert_eq!(w.outdated()["web"].since, (3, 7), "{stale:?}");
        }
        // A newer one (the next life of node1) does.
        w.request(
            restarted,
            "web",
            "node1",
            (4, 1),
            500 * MS,
            &PeerCopy::Current,
        );
        assert!(w.outdated().is_empty());
    }

    #[test]
    fn a_release_voids_the_lease_and_late_grants() {
        let t0 = Instant::now();
        let mut lease = LeaseClient::new(settings());
        let id = lease.request(t0, None).unwrap();
        let release = lease.release();
        assert!(release > id);
        assert_eq!(lease.granted(id), None);
        assert_eq!(lease.valid_until(), None);
    }

    #[test]
    fn wire_round_trip_and_forgery() {
        let key = ClusterKey::generate();
        let request = LeaseRequest {
            module: "web".into(),
            node: "node1".into(),
            incarnation: 3,
            id: 9,
            duration_ms: 1000,
            peer_copy: PeerCopy::Outdated {
                peer: "node2".into(),
            },
        };
        let bytes = request.encode(&key);
        assert_eq!(LeaseRequest::decode(&bytes, &key).unwrap(), request);
        assert_eq!(
            LeaseRequest::decode(&bytes, &ClusterKey::generate()),
            Err(DatagramError::Forged)
        );
        // A request is not a reply, even with the right key.
        assert_eq!(
            LeaseReply::decode(&bytes, &key),
            Err(DatagramError::BadMagic)
        );
    }
}
