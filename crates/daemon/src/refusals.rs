//! Refusals of nodes and users, written so that a flood is summarised, not
//! echoed: the first refusal of a kind from a source is written at once;
//! the next ones within a window are counted and written as one summary
//! line when the window ends. An attacker can then neither fill the disk
//! nor bury the real events under copies of one refusal. Every refusal —
//! a replication connection, a heartbeat, a witness datagram — goes
//! through here. Sans-IO: the caller gives the time and writes the lines
//! ([`crate::modlog::ModuleLog::refused`], or the witness's own log).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long repeated refusals of one kind from one source are counted
/// before their summary is written.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Sources named in a line of their own per window. Past it (a flood from
/// many addresses, which anyone may forge on UDP) refusals from new
/// sources are counted together, so forged addresses cannot fill the log.
const NEW_SOURCES_PER_WINDOW: usize = 16;
/// Sources counted one by one at once: memory stays bounded whatever the
/// flood.
const SOURCES: usize = 256;

/// What was refused and the class of its reason: refusals of one kind from
/// one source are counted together, so a different problem from the same
/// source (a real peer misconfigured, say) still gets its own first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RefusalKind {
    /// What was refused: "heartbeat", "replication connection", ...
    pub what: &'static str,
    /// Why, as a class: "forged", "not from the peer's address", ...
    pub why: &'static str,
}

/// One refusal: its kind, who sent it, and the whole reason.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub from: SocketAddr,
    pub reason: String,
}

/// Whom a summary counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Address(IpAddr),
    /// Every source past the window's allowance of named sources.
    Others,
}

/// A line to write, in the order returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The first refusal of its kind from its source in a window.
    First {
        kind: RefusalKind,
        from: SocketAddr,
        reason: String,
    },
    /// How many more refusals of `kind` came from `from` (`None`: from
    /// sources not named each) over `over`, with the last one's reason.
    Repeated {
        kind: RefusalKind,
        from: Option<IpAddr>,
        count: u64,
        over: Duration,
        last: String,
    },
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::First { kind, from, reason } => {
                write!(f, "refused {} from {from}: {reason}", kind.what)
            }
            Line::Repeated {
                kind,
                from,
                count,
                over,
                last,
            } => {
                let times = if *count == 1 { "time" } else { "times" };
                let source = match from {
                    Some(address) => format!("from {address}"),
                    None => "from other addresses (too many to name each)".to_string(),
                };
                write!(
                    f,
                    "refused {} {source} {count} more {times} in the last {} s ({}; last: {last})",
                    kind.what,
                    over.as_secs().max(1),
                    kind.why
                )
            }
        }
    }
}

#[derive(Debug)]
struct Counted {
    /// When this window of counting began.
    since: Instant,
    /// Refusals since the line written for the window's start.
    count: u64,
    last: String,
}

/// The refusals of one log (a module's, the witness's).
#[derive(Debug)]
pub struct Refusals {
    window: Duration,
    counted: BTreeMap<(Source, RefusalKind), Counted>,
    /// Sources named this window: (its start, how many).
    named: Option<(Instant, usize)>,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::new(WINDOW)
    }
}

impl Refusals {
    pub fn new(window: Duration) -> Self {
        Refusals {
            window,
            counted: BTreeMap::new(),
            named: None,
        }
    }

    /// Records `refusal` at `now`: the lines to write (the summaries due,
    /// then this refusal's line if it is the first of its kind from its
    /// source in a window).
    pub fn refuse(&mut self, now: Instant, refusal: Refusal) -> Vec<Line> {
        let mut lines = self.due(now);
        let Refusal { kind, from, reason } = refusal;
        if let Some(c) = self.counted.get_mut(&(Source::Address(from.ip()), kind)) {
            c.count += 1;
            c.last = reason;
            return lines;
        }
        let named = match self.named {
            Some((start, n)) if now.duration_since(start) < self.window => n,
            _ => {
                self.named = Some((now, 0));
                0
            }
        };
        if named < NEW_SOURCES_PER_WINDOW && self.counted.len() < SOURCES {
            self.named = self.named.map(|(start, n)| (start, n + 1));
            self.counted.insert(
                (Source::Address(from.ip()), kind),
                Counted {
                    since: now,
                    count: 0,
                    last: String::new(),
                },
            );
            lines.push(Line::First { kind, from, reason });
        } else {
            let others = self
                .counted
                .entry((Source::Others, kind))
                .or_insert(Counted {
                    since: now,
                    count: 0,
                    last: String::new(),
                });
            others.count += 1;
            others.last = format!("{from}: {reason}");
        }
        lines
    }

    /// The summaries of the windows ended by `now`. A source whose window
    /// counted nothing more is forgotten: its next refusal is written at
    /// once again.
    pub fn due(&mut self, now: Instant) -> Vec<Line> {
        let window = self.window;
        let mut lines = Vec::new();
        self.counted.retain(|(source, kind), c| {
            let over = now.duration_since(c.since);
            if over < window {
                return true;
            }
            if c.count == 0 {
                return false;
            }
            lines.push(Line::Repeated {
                kind: *kind,
                from: match source {
                    Source::Address(a) => Some(*a),
                    Source::Others => None,
                },
                count: std::mem::take(&mut c.count),
                over,
                last: std::mem::take(&mut c.last),
            });
            c.since = now;
            true
        });
        lines
    }

    /// When the next summary may be due, if anything is counted.
    pub fn next_due(&self) -> Option<Instant> {
        self.counted.values().map(|c| c.since + self.window).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JUNK: RefusalKind = RefusalKind {
        what: "replication connection",
        why: "not from the peer's address",
    };
    const FORGED: RefusalKind = RefusalKind {
        what: "heartbeat",
        why: "forged",
    };

    fn refusal(kind: RefusalKind, from: &str) -> Refusal {
        Refusal {
            kind,
            from: from.parse().unwrap(),
            reason: format!("{} from {from}", kind.why),
        }
    }

    /// Every refusal accounted for: the first lines plus the summaries'
    /// counts.
    fn total(lines: &[Line]) -> u64 {
        lines
            .iter()
            .map(|l| match l {
                Line::First { .. } => 1,
                Line::Repeated { count, .. } => *count,
            })
            .sum()
    }

    #[test]
    fn a_flood_from_one_source_is_one_line_then_one_summary_per_window() {
        let mut r = Refusals::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut lines = Vec::new();
        for i in 0..200u64 {
            // 200 refusals over 25 s: three windows.
            let now = t0 + Duration::from_millis(i * 125);
            lines.extend(r.refuse(now, refusal(JUNK, "198.18.0.9:40000")));
        }
        lines.extend(r.due(t0 + Duration::from_secs(60)));
        assert!(matches!(lines[0], Line::First { .. }), "{lines:?}");
        assert_eq!(lines.len(), 4, "first, then 3 summaries: {lines:?}");
        assert_eq!(total(&lines), 200);
        // Quiet for a window: forgotten, the next one is written at once.
        assert!(r.due(t0 + Duration::from_secs(80)).is_empty());
        assert_eq!(r.next_due(), None);
        let again = r.refuse(
            t0 + Duration::from_secs(81),
            refusal(JUNK, "198.18.0.9:40001"),
        );
        assert!(matches!(again[..], [Line::First { .. }]), "{again:?}");
    }

    #[test]
    fn the_first_refusal_of_another_kind_or_source_is_written_at_once() {
        let mut r = Refusals::default();
        let now = Instant::now();
        assert_eq!(r.refuse(now, refusal(JUNK, "198.18.0.9:1")).len(), 1);
        assert_eq!(r.refuse(now, refusal(JUNK, "198.18.0.9:2")).len(), 0);
        assert_eq!(r.refuse(now, refusal(FORGED, "198.18.0.9:1")).len(), 1);
        assert_eq!(r.refuse(now, refusal(JUNK, "198.18.0.10:1")).len(), 1);
        let summary = r.due(now + WINDOW);
        assert_eq!(summary.len(), 1, "{summary:?}");
        assert_eq!(
            summary[0].to_string(),
            "refused replication connection from 198.18.0.9 1 more time in the last 10 s \
             (not from the peer's address; last: not from the peer's address from 198.18.0.9:2)"
        );
    }

    #[test]
    fn forged_sources_past_the_allowance_are_counted_together() {
        let mut r = Refusals::default();
        let now = Instant::now();
        let mut lines = Vec::new();
        for i in 0..1000u32 {
            let from = format!("198.18.{}.{}:4800", i / 250, i % 250);
            lines.extend(r.refuse(now, refusal(FORGED, &from)));
        }
        assert_eq!(lines.len(), NEW_SOURCES_PER_WINDOW, "{lines:?}");
        lines.extend(r.due(now + WINDOW));
        assert_eq!(lines.len(), NEW_SOURCES_PER_WINDOW + 1);
        assert_eq!(total(&lines), 1000);
        assert!(
            lines[NEW_SOURCES_PER_WINDOW]
                .to_string()
                .contains("from other addresses (too many to name each) 984 more times"),
            "{lines:?}"
        );
    }

    #[test]
    fn memory_stays_bounded_whatever_the_sources() {
        let mut r = Refusals::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            let [_, _, a, b] = i.to_be_bytes();
            r.refuse(now, refusal(FORGED, &format!("198.18.{a}.{b}:4800")));
            assert!(r.counted.len() <= SOURCES + 1);
        }
    }
}
