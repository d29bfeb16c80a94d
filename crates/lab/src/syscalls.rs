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

/// How long the traced child may run (`timeout`'s duration).
const TRACED_LIMIT: &str = "60s";

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
fn traced(test: &str, argument: &OsStr, calls: &str) -> std::io::Result<Vec<String>> {
    let out = unique_path("strace");
    // Bounded: coreutils' `timeout` ends a child that hangs.
    let output = Command::new("timeout")
        .arg(TRACED_LIMIT)
        .args(["strace", "-f", "-qq", "-y", "-e", "signal=none", "-e"])
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

/// Checks that the test `test`, run again as the traced child with the
/// path of an existing file as its argument, replaces that file durably:
/// renames into its directory, then syncs the directory. The error shows
/// the calls seen.
pub fn replaces_durably(test: &str) -> Result<(), String> {
    let dir = unique_path("durable");
    let file = dir.join("state");
    let trace = std::fs::create_dir(&dir)
        .and_then(|()| std::fs::write(&file, b"old"))
        .and_then(|()| {
            traced(
                test,
                file.as_os_str(),
                "fsync,fdatasync,rename,renameat,renameat2",
            )
        });
    let _ = std::fs::remove_dir_all(&dir);
    let trace = trace.map_err(|e| e.to_string())?;
    if syncs_dir_after_rename(&trace, &dir) {
        Ok(())
    } else {
        Err(format!(
            "{} not synced after the rename: {trace:#?}",
            dir.display()
        ))
    }
}

/// A path under the temporary directory (as the kernel names it), unique
/// to this process and call.
fn unique_path(what: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = std::env::temp_dir();
    let tmp = tmp.canonicalize().unwrap_or(tmp);
    tmp.join(format!("holdfast-{what}-{}-{n}", std::process::id()))
}

/// Whether `trace` (from [`traced`]) renames a file into the directory
/// `dir` and then syncs `dir` itself: only then does the rename survive a
/// power loss (the old file may come back otherwise). `dir` as the kernel
/// names it (canonical).
fn syncs_dir_after_rename(trace: &[String], dir: &Path) -> bool {
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
