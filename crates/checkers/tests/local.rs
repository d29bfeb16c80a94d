//! Checkers against real processes and scripts on this machine (no network
//! targets: those live in the lab, see `lab.rs`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use holdfast_checkers::{
    AnyProbe, CheckerError, CheckerEvent, ModuleStates, ModuleStatus, Probe, ProbeContext, Runner,
    Verdict,
};
use holdfast_config::checker::{Action, CheckerConfig, CheckerKind, ProcessChecker, When};
use tokio::sync::mpsc;

/// Children killed and reaped even when the test fails.
struct Children(Vec<Child>);

impl Children {
    fn spawn(&mut self, program: &Path, argument: &str) {
        let child = Command::new(program)
            .arg(argument)
            .spawn()
            .expect("spawning sleep");
        self.0.push(child);
    }

    /// Kills the last child and reaps it.
    fn kill_last(&mut self) {
        let mut child = self.kill_last_unreaped();
        child.wait().expect("reaping sleep");
    }

    /// Kills the last child, leaving it a zombie for the caller to reap.
    fn kill_last_unreaped(&mut self) -> Child {
        let mut child = self.0.pop().expect("a child to kill");
        child.kill().expect("killing sleep");
        child
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A scratch directory removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hf-checkers-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating scratch dir");
        Self(dir)
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("writing script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod script");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn down_reason(verdict: Verdict) -> String {
    match verdict {
        Verdict::Down(reason) => reason,
        Verdict::Up => panic!("expected Down, got Up"),
    }
}

/// Polls `f` every 20 ms for at most `limit`.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Probes until `done` says so (at most 2 s): a spawned process shows its
/// new command name only some microseconds after `spawn` returned (the
/// kernel releases a vfork parent before it renames the child).
async fn settle(probe: &mut AnyProbe, done: impl Fn(&Verdict) -> bool) -> Verdict {
    let start = Instant::now();
    loop {
        let verdict = probe.probe().await;
        if done(&verdict) || start.elapsed() > Duration::from_secs(2) {
            return verdict;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn process_config(command: &str, args_regex: Option<String>) -> CheckerConfig {
    let mut config = CheckerConfig::process("sleeper", command);
    config.kind = CheckerKind::Process(ProcessChecker {
        command: command.into(),
        command_regex: None,
        args_regex,
        atleast: Some(1),
        atmost: Some(2),
    });
    config
}

#[tokio::test]
async fn process_checker_counts_live_matching_processes() {
    // `sleep` under a name of its own: its command name (comm) is that
    // file name, so only this test's processes match.
    let scratch = Scratch::new("process");
    let command = format!("hfsl{}", std::process::id() % 100_000);
    let program = scratch.0.join(&command);
    std::fs::copy("/bin/sleep", &program).expect("copying sleep");
    let mut probe =
        AnyProbe::build(&process_config(&command, None), &ProbeContext::default()).unwrap();
    let mut children = Children(Vec::new());

    let reason = down_reason(probe.probe().await);
    assert_eq!(
        reason,
        format!("process {command}: 0 instances running, at least 1 required")
    );
    children.spawn(&program, "3600");
    assert_eq!(settle(&mut probe, Verdict::is_up).await, Verdict::Up);
    children.spawn(&program, "3601");
    assert_eq!(probe.probe().await, Verdict::Up);
    children.spawn(&program, "3602");
    let reason = down_reason(settle(&mut probe, |v| !v.is_up()).await);
    assert!(
        reason.contains("3 instances running, at most 2 allowed"),
        "{reason}"
    );

    // The command line narrows the count: only the "3601" one.
    let by_args = process_config(&command, Some(" 3601$".into()));
    let mut by_args = AnyProbe::build(&by_args, &ProbeContext::default()).unwrap();
    assert_eq!(by_args.probe().await, Verdict::Up);
    let by_args = process_config(&command, Some(" 3603$".into()));
    let mut by_args = AnyProbe::build(&by_args, &ProbeContext::default()).unwrap();
    let reason = down_reason(by_args.probe().await);
    assert!(
        reason.contains("with arguments / 3603$/: 0 instances"),
        "{reason}"
    );

    // Killed but not reaped: a zombie, which must not count.
    let mut zombie = children.kill_last_unreaped();
    let stat = format!("/proc/{}/stat", zombie.id());
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(&stat)
            .is_ok_and(|s| s.contains(") Z "))),
        "the killed process did not become a zombie"
    );
    assert_eq!(probe.probe().await, Verdict::Up, "2 live + 1 zombie");
    zombie.wait().unwrap();

    children.kill_last();
    children.kill_last();
    let reason = down_reason(probe.probe().await);
    assert!(reason.contains("0 instances running"), "{reason}");
}

#[tokio::test]
async fn process_checker_by_command_name_only() {
    // Our own test binary is running: found by a name regex on its comm.
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let mut config = CheckerConfig::process("me", "unused");
    config.kind = CheckerKind::Process(ProcessChecker {
        command: "unused".into(),
        command_regex: Some(format!("^{}$", regex_escape(comm.trim()))),
        args_regex: None,
        atleast: Some(1),
        atmost: None,
    });
    let mut probe = AnyProbe::build(&config, &ProbeContext::default()).unwrap();
    assert_eq!(probe.probe().await, Verdict::Up);
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$-".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

fn custom(name: &str, exec: &Path, timeout: Duration) -> CheckerConfig {
    let mut config = CheckerConfig::custom(name, exec);
    config.timeout = timeout;
    config
}

#[tokio::test]
async fn custom_checker_exit_status_and_timeout() {
    let scratch = Scratch::new("custom");
    let context = ProbeContext {
        bin_dir: scratch.0.clone(),
        script_env: vec![("HF_TEST_VAR".into(), "from-daemon".into())],
        ..ProbeContext::default()
    };

    let ok = scratch.script("ok.sh", "test \"$HF_TEST_VAR\" = from-daemon");
    let mut probe = AnyProbe::build(&custom("ok", &ok, Duration::from_secs(5)), &context).unwrap();
    assert_eq!(probe.probe().await, Verdict::Up, "exit 0 with the env set");

    // A relative path is taken from the module's bin directory.
    scratch.script(
        "fail.sh",
        "echo checking\necho 'db not answering' >&2\nexit 3",
    );
    let config = custom("fail", Path::new("fail.sh"), Duration::from_secs(5));
    let mut probe = AnyProbe::build(&config, &context).unwrap();
    assert_eq!(
        probe.probe().await,
        Verdict::Down("custom fail: exit status 3: db not answering".into())
    );

    // Hangs, with a child of its own: both are killed at the timeout.
    let pids = scratch.0.join("pids");
    let hang = scratch.script(
        "hang.sh",
        &format!("sleep 30 &\necho \"$$ $!\" > {}\nwait", pids.display()),
    );
    let timeout = Duration::from_millis(500);
    let mut probe = AnyProbe::build(&custom("hang", &hang, timeout), &context).unwrap();
    let start = Instant::now();
    let reason = down_reason(probe.probe().await);
    let took = start.elapsed();
    assert!(
        reason.contains("still running after 500ms: killed"),
        "{reason}"
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "took {took:?}"
    );
    let pids = std::fs::read_to_string(&pids).expect("the script wrote its pids");
    for pid in pids.split_whitespace() {
        let stat = format!("/proc/{pid}/stat");
        let gone = || match std::fs::read_to_string(&stat) {
            Err(_) => true,
            Ok(s) => s.contains(") Z ") || s.contains(") X "),
        };
        assert!(
            wait_for(Duration::from_secs(5), gone),
            "process {pid} survived the timeout"
        );
    }

    // Not executable: refused when building, naming the path.
    let plain = scratch.0.join("plain.txt");
    std::fs::write(&plain, "exit 0").unwrap();
    let err = AnyProbe::build(&custom("plain", &plain, timeout), &context).unwrap_err();
    assert!(matches!(err, CheckerError::Executable { .. }), "{err}");
    assert!(err.to_string().contains("plain.txt"), "{err}");
}

/// Module states the test changes at will.
#[derive(Default)]
struct FakeModules(Mutex<Option<ModuleStatus>>);

impl FakeModules {
    fn set(&self, state: &str, generation: u64) {
        *self.0.lock().unwrap() = Some(ModuleStatus {
            state: state.into(),
            generation,
        });
    }
}

impl ModuleStates for FakeModules {
    fn status(&self, module: &str) -> Option<ModuleStatus> {
        assert_eq!(module, "db");
        self.0.lock().unwrap().clone()
    }
}

async fn next_event(events: &mut mpsc::Receiver<CheckerEvent>) -> CheckerEvent {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an event within 5 s")
        .expect("the runner is alive")
}

/// Asserts nothing arrives for `quiet`: verdicts that did not change are
/// not sent again.
async fn assert_quiet(events: &mut mpsc::Receiver<CheckerEvent>, quiet: Duration) {
    if let Ok(event) = tokio::time::timeout(quiet, events.recv()).await {
        panic!("unexpected event {event:?}");
    }
}

#[tokio::test]
async fn runner_emits_only_changes_with_reasons() {
    let scratch = Scratch::new("runner");
    let flag = scratch.0.join("healthy");
    std::fs::write(&flag, "").unwrap();
    scratch.script(
        "check.sh",
        &format!(
            "test -e {} || {{ echo 'flag missing'; exit 1; }}",
            flag.display()
        ),
    );
    let modules = Arc::new(FakeModules::default());
    modules.set("PRIM", 1);
    let context = ProbeContext {
        bin_dir: scratch.0.clone(),
        modules: Some(modules.clone()),
        ..ProbeContext::default()
    };
    let interval = Duration::from_millis(100);
    let mut module = CheckerConfig::module("dep", "db");
    module.interval = interval;
    let mut script = CheckerConfig::custom("app", "check.sh");
    script.interval = interval;
    script.down_after = 2;
    let (tx, mut events) = mpsc::channel(16);
    let runner = Runner::start(&[module, script], &context, tx).unwrap();
    assert_eq!(
        runner.checkers().collect::<Vec<_>>(),
        ["module.dep", "custom.app"]
    );

    let mut first = vec![next_event(&mut events).await, next_event(&mut events).await];
    first.sort_by(|a, b| a.checker.cmp(&b.checker));
    assert_eq!(
        first,
        [
            CheckerEvent {
                checker: "custom.app".into(),
                verdict: Verdict::Up
            },
            CheckerEvent {
                checker: "module.dep".into(),
                verdict: Verdict::Up
            },
        ]
    );
    // Many probes, no change: no event.
    assert_quiet(&mut events, interval * 5).await;

    modules.set("STOP", 1);
    assert_eq!(
        next_event(&mut events).await,
        CheckerEvent {
            checker: "module.dep".into(),
            verdict: Verdict::Down("module db: STOP, expected ALONE or PRIM or UP".into())
        }
    );
    assert_quiet(&mut events, interval * 4).await;
    modules.set("ALONE", 2);
    assert_eq!(
        next_event(&mut events).await,
        CheckerEvent {
            checker: "module.dep".into(),
            verdict: Verdict::Up
        }
    );

    std::fs::remove_file(&flag).unwrap();
    assert_eq!(
        next_event(&mut events).await,
        CheckerEvent {
            checker: "custom.app".into(),
            verdict: Verdict::Down(
                "custom app: exit status 1: flag missing (2 probes in a row)".into()
            )
        }
    );
    assert_quiet(&mut events, interval * 4).await;
    std::fs::write(&flag, "").unwrap();
    assert_eq!(next_event(&mut events).await.verdict, Verdict::Up);

    // Stopped: the tasks end and drop their senders.
    runner.stop();
    let closed = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert_eq!(closed.expect("the channel closes once stopped"), None);
}

#[tokio::test]
async fn runner_refuses_bad_configuration_and_starts_nothing() {
    let (tx, _events) = mpsc::channel(1);
    let module = CheckerConfig::module("dep", "db");
    let err = Runner::start(&[module], &ProbeContext::default(), tx.clone()).unwrap_err();
    assert!(err.to_string().contains("module.dep"), "{err}");
    let mut bad = CheckerConfig::process("p", "sleep");
    bad.interval = Duration::ZERO;
    let err = Runner::start(&[bad], &ProbeContext::default(), tx).unwrap_err();
    assert!(err.to_string().contains("proc.p: interval"), "{err}");
}

#[tokio::test]
async fn an_application_checker_probes_one_interval_after_its_start_a_resource_checker_at_once() {
    // Neither process exists: each checker's first probe reports it down.
    let interval = Duration::from_millis(800);
    let mut app = CheckerConfig::process("app", "no-such-proc-x");
    app.interval = interval;
    app.down_after = 1;
    assert_ne!(app.when, When::Pre);
    let mut resource = CheckerConfig::process("res", "no-such-proc-y");
    resource.interval = interval;
    resource.down_after = 1;
    resource.when = When::Pre;
    resource.action = Action::Wait;
    let (tx, mut events) = mpsc::channel(16);
    let started = Instant::now();
    let _runner = Runner::start(&[app, resource], &ProbeContext::default(), tx).unwrap();
    let first = next_event(&mut events).await;
    assert_eq!(first.checker, "proc.res");
    assert!(
        started.elapsed() < interval,
        "the resource checker probes at once"
    );
    let second = next_event(&mut events).await;
    assert_eq!(second.checker, "proc.app");
    assert!(
        started.elapsed() >= interval,
        "the application checker waited its interval: {:?}",
        started.elapsed()
    );
}
