//! The application of the "no acknowledged write is lost" tests on a lab
//! host: `holdfast lab append-records` writers appending fixed-size records
//! with fsync, each acknowledged record read back from their output, and
//! the check that those records are on a host's disk.

use std::io::BufRead;
use std::os::unix::fs::FileExt;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::cluster::MirrorLab;
use crate::{LabError, Result};

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
            .command(host, cluster.exe())?
            .args(["lab", "append-records", "--dir", dir, "--size"])
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
                let mut fields = line.split(' ').map(|f| f.parse::<u64>());
                if let (Some(Ok(w)), Some(Ok(n))) = (fields.next(), fields.next()) {
                    let mut seen = seen_lock(&sink);
                    seen.push((Instant::now(), w as usize, n));
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
        seen_lock(&self.seen).len()
    }

    /// Stops the writers (if their host was not killed already): the
    /// records read before `before` (all of them without a bound).
    pub fn acknowledged(mut self, before: Option<Instant>) -> Records {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        let records = seen_lock(&self.seen)
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

fn seen_lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut missing = Vec::new();
        for &(w, n) in &self.records {
            let mut buf = vec![0u8; self.size as usize];
            let expected = format!("w{w} r{n} ");
            let ok = std::fs::File::open(dir.join(format!("records-{w}")))
                .and_then(|f| f.read_exact_at(&mut buf, n * self.size))
                .is_ok_and(|()| buf.starts_with(expected.as_bytes()) && buf.ends_with(b".\n"));
            if !ok {
                missing.push(format!("writer {w} record {n}"));
            }
        }
        Ok(missing)
    }
}
