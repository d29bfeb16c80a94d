//! Custom checker: runs the user's executable once per probe; exit status 0
//! is Up, anything else Down, and still running at the timeout is Down
//! (it is then killed with its whole process group).

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};

use super::Probe;
use crate::verdict::Verdict;

/// Most output kept per stream: only the last line goes into the reason.
const MAX_OUTPUT: usize = 4096;
/// How long the output may still take once the script exited (a process it
/// left behind may hold the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_millis(200);
/// How long a killed script may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// Probe of a custom checker.
#[derive(Debug)]
pub struct CustomProbe {
    name: String,
    exec: PathBuf,
    args: Vec<String>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

/// Reads a whole stream, keeping its first [`MAX_OUTPUT`] bytes (reading on
/// so that the writer never blocks on a full pipe).
fn collect(stream: Option<impl AsyncRead + Unpin + Send + 'static>) -> JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let Some(mut stream) = stream else {
            return kept;
        };
        let mut chunk = [0u8; 1024];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            let room = MAX_OUTPUT.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..n.min(room)]);
        }
        kept
    })
}

fn last_line(output: &[u8]) -> Option<String> {
    String::from_utf8_lossy(output)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

impl CustomProbe {
    /// `exec` is already resolved (absolute or relative to the daemon's
    /// working directory); `env` is added to the daemon's environment.
    pub fn new(
        name: &str,
        exec: PathBuf,
        args: Vec<String>,
        env: Vec<(OsString, OsString)>,
        timeout: Duration,
    ) -> Self {
        Self {
            name: name.to_string(),
            exec,
            args,
            env,
            timeout,
        }
    }

    async fn run(&self) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let mut child = tokio::process::Command::new(&self.exec)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that a timeout kills what it started too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.exec.display()))?;
        let stdout = collect(child.stdout.take());
        let stderr = collect(child.stderr.take());
        let status = match timeout_at(deadline, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err(format!("waiting for {}: {e}", self.exec.display())),
            Err(_) => {
                if let Some(pid) = child.id() {
                    // Not reaped yet, so the group id is still ours.
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                // kill_on_drop and tokio's reaper take over if this is late.
                let _ = timeout(REAP_TIMEOUT, child.wait()).await;
                stdout.abort();
                stderr.abort();
                return Err(format!("still running after {:?}: killed", self.timeout));
            }
        };
        if status.success() {
            stdout.abort();
            stderr.abort();
            return Ok(());
        }
        let mut said = None;
        for mut stream in [stderr, stdout] {
            match timeout(OUTPUT_GRACE, &mut stream).await {
                Ok(Ok(output)) => said = said.or_else(|| last_line(&output)),
                // A process left behind holds the pipe: stop reading it.
                _ => stream.abort(),
            }
        }
        Err(match said {
            Some(line) => format!("{}: {line}", describe(status)),
            None => describe(status),
        })
    }
}

impl Probe for CustomProbe {
    async fn probe(&mut self) -> Verdict {
        match self.run().await {
            Ok(()) => Verdict::Up,
            Err(why) => Verdict::Down(format!("custom {}: {why}", self.name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_skips_blank_ones() {
        assert_eq!(last_line(b"a\nb\n\n  \n"), Some("b".into()));
        assert_eq!(last_line(b"\n"), None);
    }
}
