//! The system calls a piece of code makes, as `strace` sees them: a test
//! runs itself again as a child process under `strace`, and acts as that
//! child when [`CHILD`] is set in its environment — one test, which fails
//! if the child does (never a helper passing on its own).
//!
//! Needs `strace`.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Command;

/// Set in the traced child's environment, to what the test passes it.
pub const CHILD: &str = "HOLDFAST_TRACED_CHILD";

/// In the traced child, what the parent test passed it; `None` in the parent.
pub fn child_argument() -> Option<OsString> {
    std::env::var_os(CHILD)
}

/// Runs the test `test` (its full name in the running test binary, e.g.
/// `durable::tests::replace_syncs`) again in a child process with [`CHILD`]
/// set to `argument`, under `strace -f -y` tracing the system calls
/// `calls` (strace's `-e trace=` list). Returns strace's lines, one per
/// call, each descriptor followed by its path (`fsync(3</dir>) = 0`); an
/// error if strace cannot run or the child fails.
pub fn traced(test: &str, argument: &OsStr, calls: &str) -> std::io::Result<Vec<String>> {
    let out = trace_path();
    let output = Command::new("strace")
        .args(["-f", "-qq", "-y", "-e", "signal=none", "-e"])
        .arg(format!("trace={calls}"))
        .arg("-o")
        .arg(&out)
        .arg(std::env::current_exe()?)
        .args(["--exact", test, "--test-threads=1", "--nocapture"])
        .env(CHILD, argument)
        .output();
    let trace = std::fs::read_to_string(&out);
    let _ = std::fs::remove_file(&out);
    let output = output?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "the traced child {test} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(trace?.lines().map(str::to_owned).collect())
}

/// Where strace writes, unique to this process and call.
fn trace_path() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("holdfast-strace-{}-{n}", std::process::id()))
}

/// Whether `trace` (from [`traced`]) renames a file into the directory
/// `dir` and then syncs `dir` itself: only then does the rename survive a
/// power loss (the old file may come back otherwise). `dir` as the kernel
/// names it (canonical).
pub fn syncs_dir_after_rename(trace: &[String], dir: &Path) -> bool {
    let dir = dir.display().to_string();
    let renamed = trace.iter().position(|line| {
        let call = line.split_whitespace().nth(1).unwrap_or("");
        call.starts_with("rename") && line.contains(&format!("\"{dir}/"))
    });
    let Some(renamed) = renamed else {
        return false;
    };
    trace[renamed..].iter().any(|line| {
        let call = line.split_whitespace().nth(1).unwrap_or("");
        (call.starts_with("fsync(") || call.starts_with("fdatasync("))
            && line.contains(&format!("<{dir}>)"))
    })
}
