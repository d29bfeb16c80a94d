//! The activity log kept while mirroring (DRBD's "activity log"): the
//! regions where this primary may hold changes its secondary never
//! acknowledged, durable before the first change to a region is applied.
//!
//! If the primary crashes while mirroring and its secondary takes over,
//! the changes that were in flight exist only on the crashed node; when it
//! returns, its new primary sends its own tracked changes *and* these
//! regions ([`crate::Basis::ActivityLog`]), not the whole tree.
//!
//! # Regions
//!
//! [`Mark`]s: 4 MiB extents of a file (or a file's tail), directory
//! listings (a create, unlink, attribute change of an entry: its
//! directory's entries are made identical, without comparing data), and
//! renamed or hard-linked names (compared by checksum). A region stays in
//! the log while it is hot (least recently used first out), so a steady
//! workload — fsync'd overwrites, a database — touches only regions
//! already logged and writes nothing here; only a cold region costs a
//! synced append before its change. Past [`CAPACITY`] regions, those whose
//! changes the secondary has all applied are evicted (a quarter at once)
//! and the file is rewritten atomically; regions with changes in flight
//! are never evicted (the log then grows beyond the capacity). Regions
//! without a change for [`IDLE`] leave too, at the next cold region (at
//! most once per [`COOL_EVERY`]): a bulk load long past is not compared
//! after a crash.
//!
//! # Format
//!
//! `HFAM` + version (u32 LE), then records: length (u32 LE), a postcard
//! [`Record`], the first 8 bytes of its SHA-256. An append torn by a crash
//! (the last record, incomplete or failing its check) was never acted
//! upon and is ignored; any other damage, an unknown version, a missing
//! file means the log is lost: the comparison then
//! covers the whole tree.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::durable;
use crate::mark::{Mark, EXTENT};
use crate::op::is_relative_inside;

/// File name of the activity log, in the change log's directory.
pub const FILE: &str = "activity-mirror.log";
const MAGIC: &[u8; 4] = b"HFAM";
const VERSION: u32 = 1;
/// Regions kept hot (DRBD's default `al-extents` is 1237 of 4 MiB).
pub const CAPACITY: usize = 1024;
/// Extents logged ahead of a file written sequentially (its previous
/// extent hot): one synced append per 32 MiB, not per 4 MiB. Past the end
/// of the file they cost nothing at resynchronisation.
const AHEAD: u64 = 8;
/// A region without a change for this long leaves the log (its changes
/// all applied by the secondary).
pub const IDLE: Duration = Duration::from_secs(60);
/// How often idle regions may be removed (a rewrite of the file, on the
/// path of a change to a cold region).
const COOL_EVERY: Duration = Duration::from_secs(10);
/// The most regions a returning node's log may name (the capacity plus
/// what had changes in flight): more is refused as damaged.
pub const MAX_REGIONS: usize = 16 * CAPACITY;

/// One record of the file (an enum: later versions may add kinds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Record {
    /// Regions added to the log.
    Regions(Vec<Mark>),
}

/// What a node's activity log says, as read at start or sent to the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activity {
    /// The regions that may hold changes the peer lacks.
    Regions(Vec<Mark>),
    /// They cannot be known: compare the whole tree.
    Lost(String),
}

impl Activity {
    /// The regions, if the log is usable: at most [`MAX_REGIONS`], each
    /// naming a path inside the replicated directory. The error says why
    /// not (for the log line explaining the whole-tree comparison).
    pub fn usable(&self) -> Result<&[Mark], String> {
        let regions = match self {
            Activity::Lost(reason) => return Err(format!("activity log lost: {reason}")),
            Activity::Regions(r) => r,
        };
        if regions.len() > MAX_REGIONS {
            return Err(format!(
                "activity log refused: {} regions, more than {MAX_REGIONS}",
                regions.len()
            ));
        }
        let beyond = |m: &Mark| matches!(m, Mark::Extent { index, .. } if index.checked_add(1).and_then(|i| i.checked_mul(EXTENT)).is_none());
        if let Some(bad) = regions.iter().find(|m| beyond(m)) {
            return Err(format!(
                "activity log refused: {bad:?} lies beyond any file"
            ));
        }
        if let Some(bad) = regions.iter().find(|m| !is_relative_inside(m.path())) {
            return Err(format!(
                "activity log refused: a region names {:?}, outside the directory",
                bad.path()
            ));
        }
        Ok(regions)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("activity log {path}: {source}")]
pub struct ActivityError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn header() -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out
}

fn sealed(record: &Record) -> Vec<u8> {
    let bytes = postcard::to_allocvec(record).expect("plain data serialises");
    let mut out = Vec::with_capacity(bytes.len() + 12);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
    out.extend_from_slice(&Sha256::digest(&bytes)[..8]);
    out
}

/// Decodes a whole log file. Pure.
fn parse(data: &[u8]) -> Activity {
    let lost = |why: String| Activity::Lost(why);
    if data.len() < 8 || &data[..4] != MAGIC {
        return lost("not an activity log (bad header)".into());
    }
    let version = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
    if version != VERSION {
        return lost(format!(
            "activity log version {version}, expected {VERSION}"
        ));
    }
    let mut regions = HashSet::new();
    let mut rest = &data[8..];
    while !rest.is_empty() {
        let Some(len) = rest.get(..4) else {
            break; // torn length
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let end = 4usize.saturating_add(len).saturating_add(8);
        if rest.len() < end {
            break; // the last append, torn
        }
        let (body, check) = (&rest[4..4 + len], &rest[4 + len..end]);
        if Sha256::digest(body)[..8] != *check {
            if rest.len() == end {
                break; // the last append, torn
            }
            return lost(format!(
                "damaged record at byte {}",
                data.len() - rest.len()
            ));
        }
        match postcard::from_bytes::<Record>(body) {
            Ok(Record::Regions(r)) => regions.extend(r),
            Err(e) => return lost(format!("undecodable record: {e}")),
        }
        rest = &rest[end..];
    }
    let mut regions: Vec<Mark> = regions.into_iter().collect();
    regions.sort_by(|a, b| a.path().cmp(b.path()));
    Activity::Regions(regions)
}

/// Reads the activity log in `dir` (the change log's directory).
pub fn load(dir: &Path) -> Activity {
    match std::fs::read(dir.join(FILE)) {
        Ok(bytes) => parse(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Activity::Lost(format!("{FILE} is missing"))
        }
        Err(e) => Activity::Lost(format!("cannot read it: {e}")),
    }
}

/// Empties the log in `dir`: nothing this copy holds is missing on the
/// peer (a clean stop, a completed resynchronisation into it).
pub fn clear(dir: &Path) -> Result<(), ActivityError> {
    replace(dir, &header())
}

fn replace(dir: &Path, bytes: &[u8]) -> Result<(), ActivityError> {
    let path = dir.join(FILE);
    std::fs::create_dir_all(dir)
        .and_then(|()| durable::replace(&path, bytes))
        .map_err(|source| ActivityError { path, source })
}

/// The open log of a primary: the hot regions, all on disk.
#[derive(Debug)]
pub(crate) struct ActivityLog {
    dir: PathBuf,
    file: File,
    /// Region → when last used (a counter, and the time).
    hot: HashMap<Mark, (u64, Instant)>,
    tick: u64,
    /// When idle regions were last removed.
    cooled: Instant,
    /// A write failed: the file in hand may not be the log any more; the
    /// next cold region rewrites it whole.
    broken: bool,
    idle: Duration,
    cool_every: Duration,
    /// Regions written in the file (with repeats).
    written: usize,
    capacity: usize,
}

impl ActivityLog {
    /// Reads the log in `dir`; returns what it held (for the change log to
    /// merge: a primary that crashed while mirroring and starts again as
    /// primary must send those regions too). Regions recovered stay hot.
    /// Nothing is written before [`Self::start`] (called once what it held
    /// is recorded elsewhere).
    pub(crate) fn open(dir: &Path, capacity: usize) -> Result<(Self, Activity), ActivityError> {
        let path = dir.join(FILE);
        let err = |source| ActivityError {
            path: path.clone(),
            source,
        };
        let recorded = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Activity::Regions(Vec::new()),
            Err(e) => return Err(err(e)),
        };
        let kept = match &recorded {
            Activity::Regions(r) => r.clone(),
            // Its content is in the change log now (compared everything).
            Activity::Lost(_) => Vec::new(),
        };
        let log = ActivityLog {
            dir: dir.to_path_buf(),
            // Replaced by `start`.
            file: File::open("/dev/null").map_err(err)?,
            hot: kept.into_iter().map(|m| (m, (0, Instant::now()))).collect(),
            tick: 0,
            cooled: Instant::now(),
            broken: false,
            idle: IDLE,
            cool_every: COOL_EVERY,
            written: 0,
            capacity,
        };
        Ok((log, recorded))
    }

    /// Rewrites the file with the hot regions and opens it for appending.
    pub(crate) fn start(&mut self) -> Result<(), ActivityError> {
        let path = self.path();
        self.rewrite()
            .map_err(|source| ActivityError { path, source })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Replaces the file with the hot regions, atomically.
    fn rewrite(&mut self) -> std::io::Result<()> {
        self.broken = true;
        let mut bytes = header();
        let mut regions: Vec<Mark> = self.hot.keys().cloned().collect();
        regions.sort_by(|a, b| a.path().cmp(b.path()));
        self.written = regions.len();
        if !regions.is_empty() {
            bytes.extend(sealed(&Record::Regions(regions)));
        }
        durable::replace(&self.path(), &bytes)?;
        self.file = OpenOptions::new().append(true).open(self.path())?;
        self.broken = false;
        Ok(())
    }

    /// Adds `new` to the hot regions and rewrites the file; if that fails
    /// they are not hot (their change fails, and the next one retries).
    fn add_rewriting(&mut self, new: Vec<Mark>) -> std::io::Result<()> {
        self.add(new.clone());
        let result = self.rewrite();
        if result.is_err() {
            for m in &new {
                self.hot.remove(m);
            }
        }
        result
    }

    /// Before a mirrored change is applied: its regions are on disk when
    /// this returns. `busy` gives the regions with changes the secondary
    /// may not have applied (`None`: unknown, evict nothing); it is asked
    /// only when regions must be evicted.
    pub(crate) fn prepare(
        &mut self,
        marks: Vec<Mark>,
        busy: impl FnOnce() -> Option<HashSet<Mark>>,
    ) -> Result<(), ActivityError> {
        self.tick += 1;
        let now = Instant::now();
        let mut new = Vec::new();
        for m in marks {
            match self.hot.get_mut(&m) {
                Some(used) => *used = (self.tick, now),
                None if !new.contains(&m) => new.push(m),
                None => {}
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let ahead: Vec<Mark> = new
            .iter()
            .filter_map(|m| match m {
                Mark::Extent { path, index } if *index > 0 => {
                    let previous = Mark::Extent {
                        path: path.clone(),
                        index: index - 1,
                    };
                    self.hot.contains_key(&previous).then_some((path, *index))
                }
                _ => None,
            })
            .flat_map(|(path, index)| {
                (index + 1..=index.saturating_add(AHEAD)).map(move |index| Mark::Extent {
                    path: path.clone(),
                    index,
                })
            })
            .filter(|m| !self.hot.contains_key(m) && !new.contains(m))
            .collect();
        new.extend(ahead);
        let path = self.path();
        let err = |source| ActivityError { path, source };
        let full = self.hot.len() + new.len() > self.capacity;
        let cool = now.duration_since(self.cooled) >= self.cool_every
            && self
                .hot
                .values()
                .any(|(_, at)| now.duration_since(*at) >= self.idle);
        if self.broken || full || cool {
            if let Some(busy) = busy() {
                // Neither busy nor touched by this very change.
                let mut idle: Vec<(u64, Instant, Mark)> = self
                    .hot
                    .iter()
                    .filter(|(m, (t, _))| *t != self.tick && !busy.contains(m))
                    .map(|(m, (t, at))| (*t, *at, m.clone()))
                    .collect();
                idle.sort_by_key(|(t, _, _)| *t);
                let target = (self.capacity * 3 / 4).saturating_sub(new.len());
                let excess = if full {
                    self.hot.len().saturating_sub(target)
                } else {
                    0
                };
                for (i, (_, at, m)) in idle.into_iter().enumerate() {
                    if i < excess || now.duration_since(at) >= self.idle {
                        self.hot.remove(&m);
                    }
                }
            }
            self.cooled = now;
            return self.add_rewriting(new).map_err(err);
        }
        if self.written + new.len() > 2 * self.capacity {
            return self.add_rewriting(new).map_err(err);
        }
        let bytes = sealed(&Record::Regions(new.clone()));
        let appended = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = appended {
            // Maybe partly written: a damaged record unless rewritten.
            self.broken = true;
            return Err(err(e));
        }
        self.written += new.len();
        self.add(new);
        Ok(())
    }

    fn add(&mut self, new: Vec<Mark>) {
        let now = Instant::now();
        for m in new {
            self.hot.insert(m, (self.tick, now));
        }
    }

    /// Empties the log (clean stop).
    pub(crate) fn clear(&mut self) -> Result<(), ActivityError> {
        self.hot.clear();
        let path = self.path();
        self.rewrite()
            .map_err(|source| ActivityError { path, source })
    }

    /// Bytes in the file (for tests and diagnostics).
    pub(crate) fn len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    #[cfg(test)]
    fn hot(&self) -> usize {
        self.hot.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(path: &str, index: u64) -> Mark {
        Mark::Extent {
            path: path.into(),
            index,
        }
    }

    fn regions(r: Activity) -> Vec<Mark> {
        match r {
            Activity::Regions(r) => r,
            Activity::Lost(why) => panic!("lost: {why}"),
        }
    }

    #[test]
    fn hot_regions_are_logged_once_and_survive_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut log, recorded) = ActivityLog::open(tmp.path(), 8).unwrap();
            assert_eq!(recorded, Activity::Regions(vec![]));
            log.start().unwrap();
            let empty = log.len();
            log.prepare(vec![extent("f", 0)], || None).unwrap();
            let one = log.len();
            assert!(one > empty);
            // Hot: nothing written.
            log.prepare(vec![extent("f", 0)], || panic!("no eviction"))
                .unwrap();
            assert_eq!(log.len(), one);
            log.prepare(vec![Mark::Listing { path: "d".into() }], || None)
                .unwrap();
            // Dropped without clearing: a crash.
        }
        let mut got = regions(load(tmp.path()));
        got.sort_by(|a, b| a.path().cmp(b.path()));
        assert_eq!(
            got,
            vec![Mark::Listing { path: "d".into() }, extent("f", 0)]
        );
        // Reopened: they stay, on disk too.
        let (mut log, recorded) = ActivityLog::open(tmp.path(), 8).unwrap();
        assert_eq!(regions(recorded).len(), 2);
        log.start().unwrap();
        assert_eq!(regions(load(tmp.path())).len(), 2);
        log.clear().unwrap();
        assert_eq!(regions(load(tmp.path())), vec![]);
    }

    #[test]
    fn a_file_written_sequentially_syncs_the_log_once_per_8_extents() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = ActivityLog::open(tmp.path(), 1024).unwrap();
        log.start().unwrap();
        let mut appends = 0;
        for i in 0..32 {
            let before = log.len();
            log.prepare(vec![extent("seq", i)], || None).unwrap();
            appends += usize::from(log.len() != before);
        }
        // Extent 0 alone, then 1 with 8 ahead, 10 with 8 ahead...
        assert_eq!(appends, 5);
        assert_eq!(regions(load(tmp.path())).len(), 37);
        // A random writer gets nothing ahead.
        log.prepare(vec![extent("rnd", 5)], || None).unwrap();
        log.prepare(vec![extent("rnd", 2)], || None).unwrap();
        assert_eq!(regions(load(tmp.path())).len(), 39);
    }

    #[test]
    fn regions_idle_for_long_leave_at_the_next_cold_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = ActivityLog::open(tmp.path(), 1024).unwrap();
        log.start().unwrap();
        log.idle = Duration::from_millis(50);
        log.cool_every = Duration::ZERO;
        log.prepare(vec![extent("bulk", 0)], || None).unwrap();
        log.prepare(vec![extent("busy", 0)], || None).unwrap();
        log.prepare(vec![extent("hot", 0)], || None).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        // Still in use: stays.
        log.prepare(vec![extent("hot", 0)], || None).unwrap();
        // The next cold region: the idle ones leave, but one with a
        // change the secondary may lack.
        let busy: HashSet<Mark> = [extent("busy", 0)].into();
        log.prepare(vec![extent("new", 0)], || Some(busy)).unwrap();
        let mut on_disk = regions(load(tmp.path()));
        on_disk.sort_by(|a, b| a.path().cmp(b.path()));
        assert_eq!(
            on_disk,
            vec![extent("busy", 0), extent("hot", 0), extent("new", 0)]
        );
    }

    #[test]
    fn cold_regions_evict_idle_ones_never_busy_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = ActivityLog::open(tmp.path(), 8).unwrap();
        log.start().unwrap();
        // Every other extent: nothing logged ahead.
        for i in 0..8 {
            log.prepare(vec![extent("f", 2 * i)], || None).unwrap();
        }
        // Unknown what is busy: nothing evicted, the log grows.
        log.prepare(vec![extent("f", 16)], || None).unwrap();
        assert_eq!(log.hot(), 9);
        // Extent 0 (the oldest) has a change in flight: it stays.
        let busy: HashSet<Mark> = [extent("f", 0)].into();
        log.prepare(vec![extent("f", 18)], || Some(busy)).unwrap();
        assert_eq!(log.hot(), 6);
        let on_disk = regions(load(tmp.path()));
        assert_eq!(on_disk.len(), 6);
        assert!(on_disk.contains(&extent("f", 0)));
        assert!(on_disk.contains(&extent("f", 18)));
        assert!(!on_disk.contains(&extent("f", 2)), "idle and oldest");
        // The file stays bounded under a stream of cold regions.
        for i in 10..200 {
            log.prepare(vec![extent("g", 2 * i)], || Some(HashSet::new()))
                .unwrap();
        }
        assert!(log.hot() <= 8);
        assert!(regions(load(tmp.path())).len() <= 8);
        assert!(log.len() < 2 * 8 * 64 + 64, "{}", log.len());
    }

    #[test]
    fn a_torn_last_append_is_ignored_other_damage_loses_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = ActivityLog::open(tmp.path(), 8).unwrap();
            log.start().unwrap();
            log.prepare(vec![extent("f", 0)], || None).unwrap();
            log.prepare(vec![extent("f", 2)], || None).unwrap();
        }
        let path = tmp.path().join(FILE);
        let good = std::fs::read(&path).unwrap();
        // Torn append: a partial record at the end.
        let mut torn = good.clone();
        torn.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3]);
        assert_eq!(regions(parse(&torn)).len(), 2);
        // The last record failing its check: torn too (its change never ran).
        let mut last = good.clone();
        let n = last.len();
        last[n - 1] ^= 1;
        assert_eq!(regions(parse(&last)).len(), 1);
        // A damaged record followed by another: lost.
        let mut middle = good.clone();
        middle[8 + 5] ^= 0xff;
        assert!(matches!(parse(&middle), Activity::Lost(w) if w.contains("damaged")));
        // Unknown version, foreign file, missing file: lost, and why.
        let mut version = good.clone();
        version[4] = 9;
        assert!(matches!(parse(&version), Activity::Lost(w) if w.contains("version 9")));
        assert!(matches!(parse(b"garbage!"), Activity::Lost(w) if w.contains("header")));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(load(tmp.path()), Activity::Lost(w) if w.contains("is missing")));
    }

    #[test]
    fn only_bounded_logs_inside_the_directory_are_usable() {
        let ok = Activity::Regions(vec![extent("a/f", 0)]);
        assert_eq!(ok.usable().unwrap().len(), 1);
        let outside = Activity::Regions(vec![extent("../etc/passwd", 0)]);
        assert!(outside.usable().unwrap_err().contains("outside"));
        let huge = Activity::Regions(
            (0..MAX_REGIONS as u64 + 1)
                .map(|i| extent("f", i))
                .collect(),
        );
        assert!(huge.usable().unwrap_err().contains("more than"));
        let far = Activity::Regions(vec![extent("f", u64::MAX / 2)]);
        assert!(far.usable().unwrap_err().contains("beyond any file"));
        let lost = Activity::Lost("damaged record at byte 12".into());
        assert!(lost.usable().unwrap_err().contains("damaged record"));
    }
}
