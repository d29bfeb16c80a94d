//! The application of the "nothing durable is lost" tests (invariant 1),
//! defined here once: the writers (`holdfast-lab append-records` runs
//! [`append`] on a lab host) append fixed-size records with fsync, each
//! durable record is read back from their output ([`Appenders`]), and
//! [`Records::missing`] checks that those records are on a host's disk.
//! The [`Workload::Mixed`] writers also append to a stream they never
//! sync and write whole files closed without fsync (durable once closed:
//! close-to-open); [`Records::not_prefixes`] checks that every stream and
//! file on a host is a prefix of what was written.

use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;

use crate::cluster::MirrorLab;
use crate::{LabError, Result};

/// The smallest record: room for the writer's and the record's numbers.
pub const MIN_SIZE: usize = 32;

/// What the writers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Each writer appends records to its file, each followed by fsync.
    Synced,
    /// Each writer also appends every record to a stream it never syncs,
    /// and every [`FILE_EVERY`] records writes a whole file and closes it.
    Mixed,
}

/// A [`Workload::Mixed`] writer writes a whole file after this many records.
const FILE_EVERY: u64 = 8;

/// The sizes of the writes making up each whole file: more than one
/// request each, so a file cut short shows.
const FILE_PARTS: [usize; 3] = [1000, 70_000, 300];

/// The file of writer `w`'s synced records.
fn file(dir: &Path, writer: usize) -> PathBuf {
    dir.join(format!("records-{writer}"))
}

/// The stream writer `w` never syncs.
fn stream(dir: &Path, writer: usize) -> PathBuf {
    dir.join(format!("stream-{writer}"))
}

/// The `m`th whole file of writer `w`.
fn whole_file(dir: &Path, writer: usize, m: u64) -> PathBuf {
    dir.join(format!("file-{writer}-{m}"))
}

/// The content of a whole file: recognisable, different for each.
fn whole_content(writer: usize, m: u64) -> Vec<u8> {
    let total: usize = FILE_PARTS.iter().sum();
    let seed = (writer as u64) << 32 | m;
    (0..total as u64)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8)
        .collect()
}

/// Record `n` of writer `w`: `size` bytes, recognisable and never blank.
fn record(writer: usize, n: u64, size: usize) -> Vec<u8> {
    let mut bytes = format!("w{writer} r{n} ").into_bytes();
    bytes.resize(size - 1, b'.');
    bytes.push(b'\n');
    bytes
}

/// What a writer prints once something is done: `<kind> <writer> <n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    /// Record `n` is in the synced file, fsync returned.
    Synced,
    /// Record `n` was written to the stream (no durability promised).
    Streamed,
    /// Whole file `n` was written and closed.
    Closed,
}

impl Done {
    fn word(self) -> &'static str {
        match self {
            Done::Synced => "synced",
            Done::Streamed => "streamed",
            Done::Closed => "closed",
        }
    }

    fn line(self, writer: usize, n: u64) -> String {
        format!("{} {writer} {n}", self.word())
    }

    fn parse(line: &str) -> Option<(Done, usize, u64)> {
        let mut words = line.split(' ');
        // The first word once: comparing each kind with `words.next()`
        // read a new word per kind, so only "synced" lines parsed.
        let first = words.next()?;
        let kind = [Done::Synced, Done::Streamed, Done::Closed]
            .into_iter()
            .find(|k| k.word() == first)?;
        Some((
            kind,
            words.next()?.parse().ok()?,
            words.next()?.parse().ok()?,
        ))
    }
}

/// Runs `writers` writers appending `size`-byte records to their own file
/// in `dir`, each followed by `fsync` (with `workload`'s other writes),
/// and prints a line on standard output once each is done (see [`Done`]).
/// Runs until killed (or until every writer failed: each stops and says
/// why on stderr; the others go on).
pub fn append(dir: &Path, writers: usize, size: usize, workload: Workload) -> Result<()> {
    if size < MIN_SIZE {
        return Err(LabError::InvalidSpec(format!(
            "records must be at least {MIN_SIZE} bytes, not {size}"
        )));
    }
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let dir = dir.to_path_buf();
            let out = out.clone();
            std::thread::spawn(move || write_records(&dir, w, size, workload, &out))
        })
        .collect();
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("writer stopped: {e}");
        }
    }
    Ok(())
}

/// Writer `w` of [`append`].
fn write_records(
    dir: &Path,
    w: usize,
    size: usize,
    workload: Workload,
    out: &Mutex<std::io::Stdout>,
) -> Result<()> {
    let create = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .map_err(|e| LabError::io(format!("creating {}", path.display()), e))
    };
    let say = |done: Done, n: u64| {
        let mut out = out.lock();
        writeln!(out, "{}", done.line(w, n))
            .and_then(|()| out.flush())
            .map_err(|e| LabError::io("standard output", e))
    };
    let synced = create(&file(dir, w))?;
    let streamed = match workload {
        Workload::Mixed => Some(create(&stream(dir, w))?),
        Workload::Synced => None,
    };
    let mut n = 0u64;
    loop {
        let at = n * size as u64;
        if let Some(s) = &streamed {
            s.write_all_at(&record(w, n, size), at)
                .map_err(|e| LabError::io(format!("record {n} of stream {w}"), e))?;
            say(Done::Streamed, n)?;
        }
        synced
            .write_all_at(&record(w, n, size), at)
            .and_then(|()| synced.sync_all())
            .map_err(|e| LabError::io(format!("record {n} of writer {w}"), e))?;
        say(Done::Synced, n)?;
        if streamed.is_some() && n.is_multiple_of(FILE_EVERY) {
            let m = n / FILE_EVERY;
            let path = whole_file(dir, w, m);
            let mut f = create(&path)?;
            let content = whole_content(w, m);
            let mut from = 0;
            for part in FILE_PARTS {
                f.write_all(&content[from..from + part])
                    .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
                from += part;
            }
            // The close is the durability call: no fsync.
            drop(f);
            say(Done::Closed, m)?;
        }
        n += 1;
    }
}

/// A line a writer printed, with when it was read: (when, what, writer, number).
type Said = (Instant, Done, usize, u64);

/// Writers running on a host; every line they printed, with when it was
/// read.
#[derive(Debug)]
pub struct Appenders {
    child: Child,
    seen: Arc<Mutex<Vec<Said>>>,
    reader: JoinHandle<()>,
    dir: String,
    size: u64,
    writers: usize,
}

impl Appenders {
    /// Starts `writers` writers of `size`-byte records in `dir` (which
    /// must exist) on `host`, each followed by fsync.
    pub fn start(
        cluster: &MirrorLab,
        host: &str,
        dir: &str,
        writers: usize,
        size: u64,
    ) -> Result<Self> {
        Self::start_workload(cluster, host, dir, writers, size, Workload::Synced)
    }

    /// [`Appenders::start`] with `workload`.
    pub fn start_workload(
        cluster: &MirrorLab,
        host: &str,
        dir: &str,
        writers: usize,
        size: u64,
        workload: Workload,
    ) -> Result<Self> {
        let mut command = cluster.lab.command(host, &cluster.executables().lab)?;
        command
            .args(["append-records", "--dir", dir, "--size"])
            .arg(size.to_string())
            .arg("--writers")
            .arg(writers.to_string());
        if workload == Workload::Mixed {
            command.arg("--mixed");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LabError::io(format!("starting the writers on {host}"), e))?;
        let stdout = child.stdout.take().expect("piped");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((done, w, n)) = Done::parse(&line) {
                    sink.lock().push((Instant::now(), done, w, n));
                }
            }
        });
        Ok(Appenders {
            child,
            seen,
            reader,
            dir: dir.into(),
            size,
            writers,
        })
    }

    /// Records made durable by fsync so far.
    pub fn count(&self) -> usize {
        let seen = self.seen.lock();
        seen.iter()
            .filter(|(_, d, _, _)| *d == Done::Synced)
            .count()
    }

    /// Stops the writers (if their host was not killed already): what
    /// they said done before `before` (all of it without a bound).
    pub fn acknowledged(mut self, before: Option<Instant>) -> Records {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        let seen = self.seen.lock();
        let done = |kind: Done| {
            seen.iter()
                .filter(|(t, d, _, _)| *d == kind && before.is_none_or(|b| *t < b))
                .map(|&(_, _, w, n)| (w, n))
                .collect()
        };
        Records {
            dir: self.dir.clone(),
            size: self.size,
            writers: self.writers,
            records: done(Done::Synced),
            streamed: done(Done::Streamed),
            closed: done(Done::Closed),
        }
    }
}

/// What writers said done, in `dir`: (writer, number).
#[derive(Debug, Clone)]
pub struct Records {
    pub dir: String,
    pub size: u64,
    pub writers: usize,
    /// Records made durable by fsync.
    pub records: Vec<(usize, u64)>,
    /// Records written to the never-synced streams (durable only when
    /// every call waits for the secondary).
    pub streamed: Vec<(usize, u64)>,
    /// Whole files written and closed (durable: close-to-open).
    pub closed: Vec<(usize, u64)>,
}

impl Records {
    /// Records made durable by fsync.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The durable records and whole files missing from `host`'s real
    /// directory, named; with `streamed`, the streamed records too.
    pub fn missing(&self, cluster: &MirrorLab, host: &str) -> Result<Vec<String>> {
        self.missing_of(cluster, host, false)
    }

    /// [`Records::missing`], counting every record written to a stream
    /// as durable too (every call waits for the secondary).
    pub fn missing_written(&self, cluster: &MirrorLab, host: &str) -> Result<Vec<String>> {
        self.missing_of(cluster, host, true)
    }

    fn missing_of(&self, cluster: &MirrorLab, host: &str, streamed: bool) -> Result<Vec<String>> {
        let dir = cluster.host_path(host, &self.dir)?;
        let size = self.size as usize;
        let holds = |path: &Path, at: u64, want: &[u8]| {
            let mut buf = vec![0u8; want.len()];
            std::fs::File::open(path)
                .and_then(|f| f.read_exact_at(&mut buf, at))
                .is_ok_and(|()| buf == want)
        };
        let mut missing = Vec::new();
        for &(w, n) in &self.records {
            if !holds(&file(&dir, w), n * self.size, &record(w, n, size)) {
                missing.push(format!("writer {w} record {n}"));
            }
        }
        for &(w, m) in &self.closed {
            let whole = std::fs::read(whole_file(&dir, w, m)).ok();
            if whole != Some(whole_content(w, m)) {
                missing.push(format!("writer {w} whole file {m}"));
            }
        }
        if streamed {
            for &(w, n) in &self.streamed {
                if !holds(&stream(&dir, w), n * self.size, &record(w, n, size)) {
                    missing.push(format!("writer {w} streamed record {n}"));
                }
            }
        }
        Ok(missing)
    }

    /// The records files, streams and whole files on `host` that are not a
    /// prefix of what their writer wrote (the secondary's copy must be one).
    pub fn not_prefixes(&self, cluster: &MirrorLab, host: &str) -> Result<Vec<String>> {
        let dir = cluster.host_path(host, &self.dir)?;
        let size = self.size as usize;
        let mut wrong = Vec::new();
        // `expected(len)`: at least `len` bytes of what was written, or all of it.
        let mut check = |path: PathBuf, expected: &dyn Fn(usize) -> Vec<u8>| {
            let Ok(data) = std::fs::read(&path) else {
                return;
            };
            let expected = expected(data.len());
            if data.len() > expected.len() || data != expected[..data.len()] {
                wrong.push(path.display().to_string());
            }
        };
        let records_of = |w: usize| {
            move |len: usize| -> Vec<u8> {
                (0..len.div_ceil(size) as u64)
                    .flat_map(|n| record(w, n, size))
                    .collect()
            }
        };
        for w in 0..self.writers {
            check(file(&dir, w), &records_of(w));
            check(stream(&dir, w), &records_of(w));
            let files = std::fs::read_dir(&dir)
                .map_err(|e| LabError::io(format!("reading {}", dir.display()), e))?;
            let prefix = format!("file-{w}-");
            for entry in files.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(m) = name.strip_prefix(&prefix).and_then(|m| m.parse().ok()) else {
                    continue;
                };
                check(entry.path(), &|_| whole_content(w, m));
            }
        }
        Ok(wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_fills_its_size_and_a_done_line_reads_back() {
        let r = record(3, 41, MIN_SIZE);
        assert_eq!(r.len(), MIN_SIZE);
        assert!(r.starts_with(b"w3 r41 ") && r.ends_with(b".\n"));
        for done in [Done::Synced, Done::Streamed, Done::Closed] {
            assert_eq!(Done::parse(&done.line(3, 41)), Some((done, 3, 41)));
        }
        assert_eq!(Done::parse("synced 3"), None);
        assert_eq!(Done::parse("3 41"), None);
        assert_ne!(whole_content(0, 1), whole_content(1, 0));
    }
}
