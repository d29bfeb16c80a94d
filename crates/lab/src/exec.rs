//! Bounded waiting and bounded execution of the helper commands (`ip`, `nft`,
//! `unshare`): nothing here can block forever.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// Longest time any helper command may take; they normally take milliseconds.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a running helper command is polled for exit.
const COMMAND_POLL: Duration = Duration::from_millis(2);

/// Polls `cond` every `poll` until it returns true or `timeout` has passed;
/// returns whether it became true. Bounded in time and in number of calls
/// (about `timeout / poll` + 2), so it is the only waiting primitive the lab
/// uses instead of fixed sleeps.
pub fn wait_until(timeout: Duration, poll: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let poll = poll.max(Duration::from_millis(1));
    let deadline = Instant::now() + timeout;
    let rounds = timeout.as_millis() / poll.as_millis() + 2;
    for _ in 0..rounds {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(poll.min(deadline - now));
    }
    false
}

/// Runs `program args...` (optionally feeding `stdin`), waits at most
/// [`COMMAND_TIMEOUT`], and returns its stdout; a non-zero exit becomes
/// [`LabError::Command`] with the stderr.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::io(format!("spawning `{line}`"), e))?;

    // Feed and drain the pipes from threads so a chatty command cannot block
    // on a full pipe while we poll it for exit.
    let input = child.stdin.take();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let (status, stdout, stderr) = thread::scope(|s| {
        if let (Some(mut pipe), Some(text)) = (input, stdin) {
            // A write error means the command exited early; its status says why.
            s.spawn(move || pipe.write_all(text.as_bytes()));
        }
        let out = s.spawn(move || read_all(out.as_mut()));
        let err = s.spawn(move || read_all(err.as_mut()));
        let status = wait_child(&mut child, &line);
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        (status, stdout, stderr)
    });
    let status = status?;
    if status.success() {
        Ok(stdout)
    } else {
        Err(LabError::Command {
            command: line,
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        })
    }
}

fn read_all(pipe: Option<&mut impl Read>) -> String {
    let mut buf = Vec::new();
    if let Some(pipe) = pipe {
        // A read error just truncates what we report.
        let _ = pipe.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn wait_child(child: &mut std::process::Child, line: &str) -> Result<ExitStatus> {
    let mut status = None;
    let mut wait_error = None;
    wait_until(COMMAND_TIMEOUT, COMMAND_POLL, || match child.try_wait() {
        Ok(Some(s)) => {
            status = Some(s);
            true
        }
        Ok(None) => false,
        Err(e) => {
            wait_error = Some(e);
            true
        }
    });
    if let Some(e) = wait_error {
        return Err(LabError::io(format!("waiting for `{line}`"), e));
    }
    match status {
        Some(s) => Ok(s),
        None => {
            // Kill and reap so no zombie or stray helper outlives the error.
            let _ = child.kill();
            let _ = child.wait();
            Err(LabError::Timeout {
                command: line.to_string(),
                after: COMMAND_TIMEOUT,
            })
        }
    }
}
