//! `holdfast lab append-records`: the application of the "no acknowledged
//! write is lost" tests. Each writer appends fixed-size records to its own
//! file, each followed by `fsync`, and prints `<writer> <record>` once the
//! `fsync` returned: the lines printed are the acknowledged records.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

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

/// Runs `writers` writers until killed (or until one fails: it stops and
/// says why on stderr; the others go on).
pub fn run(dir: &Path, writers: usize, size: usize) -> Result<()> {
    if size < 32 {
        bail!("--size must be at least 32 bytes, not {size}");
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
                    .with_context(|| format!("creating {}", path.display()))?;
                let mut n = 0u64;
                loop {
                    f.write_all_at(&record(w, n, size), n * size as u64)
                        .and_then(|()| f.sync_all())
                        .with_context(|| format!("record {n} of {}", path.display()))?;
                    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                    writeln!(out, "{w} {n}").and_then(|()| out.flush())?;
                    n += 1;
                }
            })
        })
        .collect();
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("writer stopped: {e:#}");
        }
    }
    Ok(())
}
