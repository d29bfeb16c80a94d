//! Running the user's scripts (`prestart`, `start_prim`, `stop_prim`, ...)
//! with SafeKit's arguments and environment.
//!
//! Arguments: `current-state next-state action` (SafeKit §14.2), preceded by
//! `force` for the second, forced call of a stop script. Environment: the
//! SafeKit variables (`SAFE`, `SAFEMODULE`, `SAFEBIN`, `SAFEUSERBIN`,
//! `SAFEVAR`, `SAFEUSERVAR`, `SAFEUSERCONF`), Holdfast's own
//! (`HOLDFAST_MODULE`, `HOLDFAST_NODE`, `HOLDFAST_PEER`, `HOLDFAST_STATE`,
//! `HOLDFAST_NEXT_STATE`, `HOLDFAST_ACTION`, `HOLDFAST_REASON`,
//! `HOLDFAST_FORCE`, `HOLDFAST_API`) and the module's `scripts.env`.
//! Output goes to the module's application log. A script that outlives its
//! timeout is killed with its whole process group.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use holdfast_membership::{ScriptOutcome, ScriptRun};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Everything needed to run one script; built by the module shell.
#[derive(Debug, Clone)]
pub struct ScriptJob {
    pub path: PathBuf,
    pub run: ScriptRun,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Where stdout/stderr go; `None` discards them.
    pub output: Option<PathBuf>,
}

impl ScriptJob {
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::with_capacity(4);
        if self.run.force {
            args.push("force".to_string());
        }
        args.push(self.run.current.to_string());
        args.push(self.run.next.to_string());
        args.push(self.run.action.as_str().to_string());
        args
    }
}

/// Runs the script to completion, or kills it at its timeout or when
/// `kill` fires (`forcestop`).
pub async fn run(job: ScriptJob, kill: tokio::sync::oneshot::Receiver<()>) -> ScriptOutcome {
    let meta = match std::fs::metadata(&job.path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ScriptOutcome::Missing,
        Err(e) => return ScriptOutcome::Failed(format!("{}: {e}", job.path.display())),
    };
    if meta.permissions().mode() & 0o111 == 0 {
        return ScriptOutcome::Failed(format!("{} is not executable", job.path.display()));
    }
    let (stdout, stderr) = match &job.output {
        Some(path) => match open_output(path, &job).await {
            Ok(file) => match file.try_clone() {
                Ok(copy) => (Stdio::from(file), Stdio::from(copy)),
                Err(e) => return ScriptOutcome::Failed(format!("application log: {e}")),
            },
            Err(e) => {
                return ScriptOutcome::Failed(format!("application log {}: {e}", path.display()))
            }
        },
        None => (Stdio::null(), Stdio::null()),
    };
    let mut command = Command::new(&job.path);
    command
        .args(job.args())
        .envs(&job.env)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group, so a timeout kills everything it started
        // in the foreground, and signals to the daemon do not reach it.
        .process_group(0)
        .kill_on_drop(false);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return ScriptOutcome::Failed(format!("cannot run {}: {e}", job.path.display())),
    };
    let pid = child.id();
    let kill_group = || {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            // The group may already be gone; nothing else to do then.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    // A dropped sender (the module gone) is not a kill: only a sent one is.
    let killed = async {
        if kill.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        waited = tokio::time::timeout(job.timeout, child.wait()) => match waited {
            Ok(Ok(status)) if status.success() => ScriptOutcome::Success,
            Ok(Ok(status)) => ScriptOutcome::Failed(match status.code() {
                Some(code) => format!("exit code {code}"),
                None => format!("ended by {status}"),
            }),
            Ok(Err(e)) => ScriptOutcome::Failed(format!("wait: {e}")),
            Err(_) => {
                kill_group();
                let _ = child.wait().await;
                ScriptOutcome::TimedOut(job.timeout)
            }
        },
        () = killed => {
            kill_group();
            let _ = child.wait().await;
            ScriptOutcome::Failed("killed by forcestop".into())
        }
    }
}

/// Opens the application log in append mode and writes a header naming the run.
async fn open_output(path: &PathBuf, job: &ScriptJob) -> std::io::Result<std::fs::File> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    let header = format!(
        "==== {} {} {}\n",
        humantime::format_rfc3339_millis(SystemTime::now()),
        job.run.script.name(),
        job.args().join(" ")
    );
    file.write_all(header.as_bytes()).await?;
    Ok(file.into_std().await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_membership::{Script, ScriptAction, State};

    fn job(dir: &std::path::Path, body: &str, timeout: Duration, force: bool) -> ScriptJob {
        let path = dir.join("start_prim");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        ScriptJob {
            path,
            run: ScriptRun {
                id: 1,
                script: Script::StartPrim,
                force,
                current: State::Wait,
                next: State::Alone,
                action: ScriptAction::Start,
                reason: "test".into(),
            },
            env: BTreeMap::from([("SAFEMODULE".to_string(), "web".to_string())]),
            timeout,
            output: Some(dir.join("app.log")),
        }
    }

    /// A kill that never comes: its sender is dropped at once.
    fn not_killed() -> tokio::sync::oneshot::Receiver<()> {
        tokio::sync::oneshot::channel().1
    }

    #[tokio::test]
    async fn a_kill_ends_the_script_and_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let j = job(dir.path(), &script, Duration::from_secs(30), false);
        let (kill, killed) = tokio::sync::oneshot::channel();
        let running = tokio::spawn(run(j, killed));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !marker.exists() {
            assert!(std::time::Instant::now() < deadline, "the script started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill.send(()).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("killed well before its timeout")
            .unwrap();
        assert_eq!(outcome, ScriptOutcome::Failed("killed by forcestop".into()));
        let child: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Its background child went with its process group.
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_err()
            || std::fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|s| s.contains(") Z "));
        assert!(gone, "the script's child {child} was killed");
    }

    #[tokio::test]
    async fn passes_safekit_arguments_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(
            dir.path(),
            "echo \"args=$* module=$SAFEMODULE\"",
            Duration::from_secs(10),
            true,
        );
        assert_eq!(run(j, not_killed()).await, ScriptOutcome::Success);
        let log = std::fs::read_to_string(dir.path().join("app.log")).unwrap();
        assert!(
            log.contains("args=force WAIT ALONE start module=web"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn failure_timeout_and_missing_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), "exit 3", Duration::from_secs(10), false);
        assert_eq!(
            run(j, not_killed()).await,
            ScriptOutcome::Failed("exit code 3".into())
        );
        let j = job(dir.path(), "sleep 30", Duration::from_millis(200), false);
        assert_eq!(
            run(j, not_killed()).await,
            ScriptOutcome::TimedOut(Duration::from_millis(200))
        );
        let mut j = job(dir.path(), "true", Duration::from_secs(1), false);
        j.path = dir.path().join("absent");
        assert_eq!(run(j, not_killed()).await, ScriptOutcome::Missing);
    }
}
