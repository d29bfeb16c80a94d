//! What `holdfast state` shows of a module's replicated directories: each
//! one's activity, a resynchronisation's progress, what the next one will
//! send; updated by the replication threads, read by the API.

use std::path::PathBuf;
use std::sync::Arc;

use holdfast_replication::{Link, Progress, Tail, TrackedSummary, Tree};
use parking_lot::Mutex;

use super::directory::Dir;

/// What a replicated directory is doing on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Neither primary nor secondary.
    Idle,
    /// SECOND: applying what the primary sends.
    Receiving,
    /// Primary without a secondary (ALONE): changes tracked for later.
    Tracking,
    /// Primary bringing the secondary up to date.
    Resynchronising,
    /// Primary with an up-to-date secondary: every change acknowledged by it.
    Mirroring,
    /// Primary whose changes wait: its live secondary failed
    /// (`on_secondary_failure = block`) until it is resynchronised or
    /// declared lost, or the witness has yet to fence the secondary's copy.
    Holding,
}

/// A reading of a resynchronisation's progress.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResyncProgress {
    pub bytes_total: u64,
    pub bytes_left: u64,
    pub bytes_sent: u64,
    /// Bytes examined per second since the start.
    pub rate: f64,
    pub eta_seconds: Option<f64>,
}

impl ResyncProgress {
    /// Done, as a fraction of the total (0 before anything is known).
    pub fn fraction(&self) -> f64 {
        if self.bytes_total == 0 {
            0.0
        } else {
            (self.bytes_total - self.bytes_left) as f64 / self.bytes_total as f64
        }
    }

    /// "37% (12.0 MiB left of 19.1 MiB, 8.2 MiB/s, about 2 s left)".
    pub fn describe(&self) -> String {
        let eta = match self.eta_seconds {
            Some(s) => format!(", about {} s left", s.ceil() as u64),
            None => String::new(),
        };
        format!(
            "{:.0}% ({} left of {}, {}/s{eta})",
            self.fraction() * 100.0,
            bytes(self.bytes_left as f64),
            bytes(self.bytes_total as f64),
            bytes(self.rate),
        )
    }
}

/// "1 file", "2 files".
fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `n` bytes with a binary unit, for people.
fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl From<holdfast_replication::ProgressReport> for ResyncProgress {
    fn from(r: holdfast_replication::ProgressReport) -> Self {
        ResyncProgress {
            bytes_total: r.bytes_total,
            bytes_left: r.bytes_left,
            bytes_sent: r.bytes_sent,
            rate: r.rate,
            eta_seconds: r.eta.map(|d| d.as_secs_f64()),
        }
    }
}

/// While ALONE (or holding writes): what the next resynchronisation will
/// send, from the change log (SafeKit's `rfsdiff`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrackedChanges {
    #[serde(flatten)]
    pub summary: TrackedSummary,
    /// The last resynchronisation's rate (bytes examined per second), if
    /// one ran since the daemon started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// At that rate, when the figures are the whole of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
}

impl TrackedChanges {
    pub(super) fn new(summary: TrackedSummary, rate: Option<f64>) -> Self {
        let work = summary.bytes + summary.bytes_compared;
        let eta_seconds = rate
            .filter(|r| *r > 0.0 && work > 0 && summary.known())
            .map(|r| work as f64 / r);
        TrackedChanges {
            summary,
            rate,
            eta_seconds,
        }
    }

    /// "12 files, 3.2 MiB to send since the secondary left"; never a
    /// figure where only a comparison will tell.
    pub fn describe(&self) -> String {
        let s = &self.summary;
        if s.everything {
            return "what changed since the secondary left is unknown until compared (change tracking was lost: every file is compared by checksum)".into();
        }
        let mut parts = vec![format!(
            "{}, {} to send",
            counted(s.files, "file", "files"),
            bytes(s.bytes as f64)
        )];
        if s.bytes_compared > 0 {
            parts.push(format!(
                "{} to compare by checksum",
                bytes(s.bytes_compared as f64)
            ));
        }
        if s.entries > 0 {
            parts.push(counted(s.entries, "entry", "entries"));
        }
        if s.moves > 0 {
            parts.push(counted(s.moves, "rename or link", "renames or links"));
        }
        let mut text = format!("{} since the secondary left", parts.join(", "));
        if s.directories > 0 {
            text.push_str(&format!(
                ", and {} compared entry by entry (what differs there is unknown until compared)",
                counted(s.directories, "directory", "directories")
            ));
        }
        if s.linked {
            text.push_str(", and hard-linked files compared (unknown until compared)");
        }
        if let (Some(eta), Some(rate)) = (self.eta_seconds, self.rate) {
            text.push_str(&format!(
                ": about {} s at the last resynchronisation's {}/s",
                eta.ceil() as u64,
                bytes(rate)
            ));
        }
        text
    }
}

/// The last resynchronisation a directory's primary completed since its
/// daemon started: the figures of the module log's "resynchronised" line,
/// as data for programs (the lab's tests and benchmarks read these).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LastResync {
    /// What it covered ([`DirStatus::basis`] while it ran).
    pub basis: String,
    pub bytes_sent: u64,
    pub blocks_compared: u64,
    /// Bytes those blocks hold.
    pub bytes_compared: u64,
    /// Entries (names, attributes) brought up to date.
    pub entries: u64,
    /// From its start to its end.
    pub seconds: f64,
    /// When it ended, Unix time in milliseconds.
    pub ended_at_ms: u64,
}

/// While primary: what the secondary has not acknowledged yet — what a
/// hard crash of this node now would lose (invariant 1; bounded by
/// `max_unacked_bytes` and `max_unacked_age`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Unacknowledged {
    pub changes: u64,
    /// Bytes of data written among them.
    pub bytes: u64,
    /// Age of the oldest of them (0 when there is none).
    pub oldest_seconds: f64,
}

impl From<holdfast_replication::Unacknowledged> for Unacknowledged {
    fn from(u: holdfast_replication::Unacknowledged) -> Self {
        Unacknowledged {
            changes: u.changes,
            bytes: u.bytes,
            oldest_seconds: u.oldest.map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// One replicated directory in `holdfast state`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DirStatus {
    pub dir: PathBuf,
    pub activity: Activity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ResyncProgress>,
    /// While resynchronising: what it covers ("tracked changes", "...
    /// activity log: N regions", "comparing checksums: why").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<String>,
    /// What keeps it from mirroring (a refusal, the secondary unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// While tracking or holding: what the secondary will be sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracked: Option<TrackedChanges>,
    /// The last resynchronisation it completed as primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resync: Option<LastResync>,
    /// While primary: what the secondary has not acknowledged yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unacknowledged: Option<Unacknowledged>,
}

#[derive(Debug)]
struct LiveDir {
    dir: PathBuf,
    activity: Activity,
    progress: Option<Arc<Progress>>,
    basis: Option<String>,
    problem: Option<String>,
    /// While primary: its change log and directory, for [`TrackedChanges`],
    /// and its unacknowledged tail.
    primary: Option<(Link, Tree, Tail)>,
    /// The last resynchronisation's rate, bytes per second.
    last_rate: Option<f64>,
    last_resync: Option<LastResync>,
}

impl LiveDir {
    /// A directory nothing has happened to yet.
    fn idle(dir: PathBuf) -> Self {
        LiveDir {
            dir,
            activity: Activity::Idle,
            progress: None,
            basis: None,
            problem: None,
            primary: None,
            last_rate: None,
            last_resync: None,
        }
    }
}

/// The live status of a module's replicated directories, shared with the
/// API (which reads it) and the replication threads (which update it).
#[derive(Debug, Clone)]
pub struct ReplicationStatus(Arc<Mutex<Vec<LiveDir>>>);

impl ReplicationStatus {
    pub(super) fn new(dirs: &[Dir]) -> Self {
        ReplicationStatus(Arc::new(Mutex::new(
            dirs.iter().map(|d| LiveDir::idle(d.path.clone())).collect(),
        )))
    }

    pub(super) fn set(&self, index: usize, activity: Activity, progress: Option<Arc<Progress>>) {
        if let Some(d) = self.0.lock().get_mut(index) {
            if activity != d.activity {
                d.problem = None;
            }
            d.activity = activity;
            d.basis = progress.as_ref().and(d.basis.take());
            d.progress = progress;
        }
    }

    /// What the resynchronisation about to start covers.
    pub(super) fn basis(&self, index: usize, basis: String) {
        if let Some(d) = self.0.lock().get_mut(index) {
            d.basis = Some(basis);
        }
    }

    pub(super) fn problem(&self, index: usize, problem: Option<String>) {
        if let Some(d) = self.0.lock().get_mut(index) {
            d.problem = problem;
        }
    }

    /// The directory is mounted as primary (`None`: no longer).
    pub(super) fn primary(&self, index: usize, primary: Option<(Link, Tree, Tail)>) {
        if let Some(d) = self.0.lock().get_mut(index) {
            d.primary = primary;
        }
    }

    pub(super) fn last_rate(&self, index: usize) -> Option<f64> {
        self.0.lock().get(index).and_then(|d| d.last_rate)
    }

    /// A resynchronisation completed at `rate` bytes per second.
    pub(super) fn resynchronised(&self, index: usize, rate: f64, resync: LastResync) {
        if let Some(d) = self.0.lock().get_mut(index) {
            // One with nothing to examine measured nothing.
            if rate > 0.0 {
                d.last_rate = Some(rate);
            }
            d.last_resync = Some(resync);
        }
    }

    pub fn snapshot(&self) -> Vec<DirStatus> {
        let read: Vec<_> = self
            .0
            .lock()
            .iter()
            .map(|d| {
                let status = DirStatus {
                    dir: d.dir.clone(),
                    activity: d.activity,
                    progress: d.progress.as_ref().map(|p| p.report().into()),
                    basis: d.basis.clone(),
                    problem: d.problem.clone(),
                    tracked: None,
                    last_resync: d.last_resync.clone(),
                    unacknowledged: d
                        .primary
                        .as_ref()
                        .map(|(_, _, tail)| tail.unacknowledged().into()),
                };
                let tracking = matches!(d.activity, Activity::Tracking | Activity::Holding);
                let primary = d.primary.clone().filter(|_| tracking);
                (status, primary, d.last_rate)
            })
            .collect();
        // Outside the lock: the change log's counts (and a few sizes).
        read.into_iter()
            .map(|(mut status, primary, rate)| {
                status.tracked = primary.map(|(link, tree, _)| {
                    TrackedChanges::new(holdfast_replication::tracked(&tree, link.log()), rate)
                });
                status
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimate_of_the_duration_needs_a_measured_rate_and_known_figures() {
        let known = TrackedSummary {
            files: 1,
            bytes: 4 << 20,
            bytes_compared: 4 << 20,
            ..TrackedSummary::default()
        };
        let rate = 2.0 * 1024.0 * 1024.0;
        assert_eq!(
            TrackedChanges::new(known, Some(rate)).eta_seconds,
            Some(4.0)
        );
        assert_eq!(TrackedChanges::new(known, None).eta_seconds, None);
        let unknown = TrackedSummary {
            linked: true,
            ..known
        };
        assert_eq!(TrackedChanges::new(unknown, Some(rate)).eta_seconds, None);
        // The JSON of the API: the summary's fields, flat.
        let json = serde_json::to_value(TrackedChanges::new(known, None)).unwrap();
        assert_eq!(json["bytes"], 4 << 20);
        assert!(json.get("eta_seconds").is_none());
    }

    #[test]
    fn the_last_resynchronisation_is_reported_with_its_figures() {
        let status = ReplicationStatus(Arc::new(Mutex::new(vec![LiveDir::idle(
            "/srv/app/data".into(),
        )])));
        status.set(0, Activity::Resynchronising, None);
        let before = serde_json::to_value(status.snapshot()).unwrap();
        assert!(before[0].get("last_resync").is_none());
        let resync = LastResync {
            basis: "tracked changes".into(),
            bytes_sent: 1 << 20,
            blocks_compared: 3,
            bytes_compared: 3 << 12,
            entries: 2,
            seconds: 0.25,
            ended_at_ms: 1_700_000_000_000,
        };
        status.resynchronised(0, 0.0, resync.clone());
        status.set(0, Activity::Mirroring, None);
        let after = serde_json::to_value(status.snapshot()).unwrap();
        assert_eq!(after[0]["last_resync"]["bytes_sent"], 1 << 20);
        assert_eq!(after[0]["last_resync"]["basis"], "tracked changes");
        let back: Vec<DirStatus> = serde_json::from_value(after).unwrap();
        assert_eq!(back[0].last_resync, Some(resync));
        // Nothing examined: no rate measured, the figures reported all the same.
        assert_eq!(status.last_rate(0), None);
    }
}
