//! The application of the "no acknowledged write is lost" tests, defined
//! here once: the writers (`holdfast-lab append-records` runs [`append`]
//! on a lab host) append fixed-size records with fsync, each acknowledged
//! record is read back from their output ([`Appenders`]), and
//! [`Records::missing`] checks that those records are on a host's disk.

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

/// The file of writer `w`.
fn file(dir: &Path, writer: usize) -> PathBuf {
    dir.join(format!("records-{writer}"))
}

/// Record `n` of writer `w`: `size` bytes, recognisable and never blank.
fn record(writer: usize, n: u64, size: usize) -> Vec<u8> {
    let mut bytes = format!("w{writer} r{n} ").into_bytes();
    bytes.resize(size - 1, b'.');
    bytes.push(b'\n');
    bytes
}

/// The line a writer prints once record `n` is on disk: `<writer> <record>`.
fn acknowledgement(writer: usize, n: u64) -> String {
    format!("{writer} {n}")
}

/// The writer and record of an [`acknowledgement`] line.
fn acknowledged_record(line: &str) -> Option<(usize, u64)> {
    let (w, n) = line.split_once(' ')?;
    Some((w.parse().ok()?, n.parse().ok()?))
}

/// Runs `writers` writers appending `size`-byte records to their own file
/// in `dir`, each followed by `fsync`, and prints an acknowledgement line
/// on standard output once the `fsync` returned. Runs until killed (or
/// until every writer failed: each stops and says why on stderr; the
/// others go on).
pub fn append(dir: &Path, writers: usize, size: usize) -> Result<()> {
    if size < MIN_SIZE {
        return Err(LabError::InvalidSpec(format!(
            "records must be at least {MIN_SIZE} bytes, not {size}"
        )));
    }
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let path = file(dir, w);
            let out = out.clone();
            std::thread::spawn(move || -> Result<()> {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
                let mut n = 0u64;
                loop {
                    f.write_all_at(&record(w, n, size), n * size as u64)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| {
                            LabError::io(format!("record {n} of {}", path.display()), e)
                        })?;
                    let mut out = out.lock();
                    writeln!(out, "{}", acknowledgement(w, n))
                        .and_then(|()| out.flush())
                        .map_err(|e| LabError::io("standard output", e))?;
                    n += 1;
                }
            })
        })
        .collect();
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("writer stopped: {e}");
        }
    }
    Ok(())
}

/// Writers running on a host; every record they acknowledged, with when
/// it was read.
#[derive(Debug)]
pub struct Appenders {
    child: Child,
    seen: Arc<Mutex<Vec<(Instant, usize, u64)>>>,
    reader: JoinHandle<()>,
    dir: String,
    size: u64,
}

impl Appenders {
    /// Starts `writers` writers of `size`-byte records in `dir` (which
    /// must exist) on `host`.
    pub fn start(
        cluster: &MirrorLab,
        host: &str,
        dir: &str,
        writers: usize,
        size: u64,
    ) -> Result<Self> {
        let mut child = cluster
            .lab
            .command(host, &cluster.executables().lab)?
            .args(["append-records", "--dir", dir, "--size"])
            .arg(size.to_string())
            .arg("--writers")
            .arg(writers.to_string())
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
                if let Some((w, n)) = acknowledged_record(&line) {
                    sink.lock().push((Instant::now(), w, n));
                }
            }
        });
        Ok(Appenders {
            child,
            seen,
            reader,
            dir: dir.into(),
            size,
        })
    }

    /// Records acknowledged so far.
    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }

    /// Stops the writers (if their host was not killed already): the
    /// records read before `before` (all of them without a bound).
    pub fn acknowledged(mut self, before: Option<Instant>) -> Records {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        let records = self
            .seen
            .lock()
            .iter()
            .filter(|(t, _, _)| before.is_none_or(|b| *t < b))
            .map(|&(_, w, n)| (w, n))
            .collect();
        Records {
            dir: self.dir,
            size: self.size,
            records,
        }
    }
}

/// Acknowledged records: (writer, record number), in `dir`.
#[derive(Debug, Clone)]
pub struct Records {
    pub dir: String,
    pub size: u64,
    pub records: Vec<(usize, u64)>,
}

impl Records {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Those missing from `host`'s real directory, named.
    pub fn missing(&self, cluster: &MirrorLab, host: &str) -> Result<Vec<String>> {
        let dir = cluster.host_path(host, &self.dir)?;
        let size = self.size as usize;
        let mut missing = Vec::new();
        for &(w, n) in &self.records {
            let mut buf = vec![0u8; size];
            let ok = std::fs::File::open(file(&dir, w))
                .and_then(|f| f.read_exact_at(&mut buf, n * self.size))
                .is_ok_and(|()| buf == record(w, n, size));
            if !ok {
                missing.push(format!("writer {w} record {n}"));
            }
        }
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_fills_its_size_and_an_acknowledgement_reads_back() {
        let r = record(3, 41, MIN_SIZE);
        assert_eq!(r.len(), MIN_SIZE);
        assert!(r.starts_with(b"w3 r41 ") && r.ends_with(b".\n"));
        assert_eq!(acknowledged_record(&acknowledgement(3, 41)), Some((3, 41)));
        assert_eq!(acknowledged_record("3"), None);
    }
}
