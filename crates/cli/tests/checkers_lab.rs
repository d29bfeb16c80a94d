//! Checkers and the recovery policy on real test hosts: a process checker
//! restarting the application, then failing over past maxloop; a resource
//! (ping) checker putting the module in WAIT and back; a TCP checker
//! catching a hung application.

mod common;

use std::time::Duration;

use common::{api_log, started, SETTLE};
use holdfast_lab::cluster::{settled, MirrorLab, MirrorOptions};

fn kill_app(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .expect("signal the application");
}

/// Waits until the application runs on `host` with a pid other than `old`.
fn restarted(cluster: &MirrorLab, host: &str, old: i32) -> i32 {
    let mut pid = None;
    let ok = holdfast_lab::wait_until(SETTLE, Duration::from_millis(50), || {
        pid = cluster.app_pid(host).filter(|p| *p != old);
        pid.is_some()
    });
    assert!(ok, "the application was restarted on {host}");
    pid.unwrap()
}

const PROCESS_CHECKER: &str = r#"
[[checker]]
name = "app"
type = "process"
command = "holdfast-lab"
args_regex = "sample-app"
action = "restart"
interval = "200ms"
"#;

#[test]
fn a_dying_process_is_restarted_maxloop_times_then_fails_over_and_is_held_back() {
    let (mut cluster, prim, second) = started(MirrorOptions {
        module_extra: "maxloop = 3\nloop_interval = \"1h\"".into(),
        tail: PROCESS_CHECKER.into(),
        ..MirrorOptions::default()
    });
    let mut pid = cluster.app_pid(prim).unwrap();
    for round in 1..=3 {
        kill_app(pid, nix::sys::signal::Signal::SIGKILL);
        pid = restarted(&cluster, prim, pid);
        assert_eq!(
            cluster.state(prim).unwrap().state,
            "PRIM",
            "round {round}: restarted locally"
        );
        assert!(cluster.app_pid(second).is_none());
    }
    // The 4th failure: past maxloop, the application fails over.
    kill_app(pid, nix::sys::signal::Signal::SIGKILL);
    cluster
        .wait_states(SETTLE, |a, b| {
            let (p, s) = if prim == "node1" { (a, b) } else { (b, a) };
            settled(p, "SECOND") && settled(s, "PRIM")
        })
        .expect("failover to the peer");
    assert!(cluster.wait_app(second, SETTLE));
    let log = api_log(&cluster, prim);
    assert_eq!(log.matches("action restart (failure").count(), 3, "{log}");
    assert!(log.contains("exceed maxloop 3"), "{log}");
    // The checker's actions are its own, not the administrator's.
    assert_eq!(
        log.matches("action restart called by checker ").count(),
        3,
        "{log}"
    );
    assert!(
        !log.contains("restart called by the administrator"),
        "{log}"
    );

    // The failing node is not given the application back: the peer dies and
    // it waits instead of taking over.
    cluster.kill(second).unwrap();
    let (a, b) = cluster
        .wait_states(SETTLE, |a, b| {
            settled(if prim == "node1" { a } else { b }, "WAIT")
        })
        .expect("held back in WAIT");
    let held = if prim == "node1" { a } else { b };
    assert!(
        held.unwrap().reason.contains("maxloop"),
        "the reason names the recovery limit"
    );
    assert!(cluster.app_pid(prim).is_none());
    // An administrator acts: the counter resets and it takes over.
    cluster
        .run_cli_checked(prim, &["prim", "-m", "demo"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cluster.wait_app(prim, SETTLE));
}

#[test]
fn a_missing_resource_puts_the_module_in_wait_and_it_comes_back_by_itself() {
    let (cluster, prim, _) = started(MirrorOptions {
        tail: r#"
[[checker]]
name = "gateway"
type = "ping"
address = "198.18.0.100"
interval = "200ms"
timeout = "200ms"
down_after = 2
up_after = 1
"#
        .into(),
        ..MirrorOptions::default()
    });
    // The "gateway" (the client host) disappears from both nodes.
    cluster.lab.link_down("client", 0).unwrap();
    let (a, _) = cluster
        .wait_states(SETTLE, |a, b| settled(a, "WAIT") && settled(b, "WAIT"))
        .expect("both WAIT");
    assert!(
        a.unwrap().reason.contains("ping.gateway"),
        "the reason names the resource"
    );
    assert!(cluster.app_pid(prim).is_none(), "the application stopped");
    cluster.lab.link_up("client", 0).unwrap();
    cluster
        .wait_states(SETTLE, |a, b| {
            (settled(a, "PRIM") && settled(b, "SECOND"))
                || (settled(a, "SECOND") && settled(b, "PRIM"))
        })
        .expect("back by itself");
    assert!(api_log(&cluster, prim).contains("resource ping.gateway is back"));
}

#[test]
fn a_hung_application_is_caught_by_the_tcp_checker_and_restarted() {
    let (cluster, prim, _) = started(MirrorOptions {
        tail: format!(
            r#"
[[checker]]
name = "app"
type = "tcp"
address = "{}"
port = 8080
send = ""
expect = "node"
interval = "200ms"
timeout = "300ms"
down_after = 2
up_after = 1
"#,
            "127.0.0.1"
        ),
        ..MirrorOptions::default()
    });
    let pid = cluster.app_pid(prim).unwrap();
    // Alive but not answering: the kernel still completes TCP handshakes.
    kill_app(pid, nix::sys::signal::Signal::SIGSTOP);
    let new = restarted(&cluster, prim, pid);
    assert_ne!(new, pid);
    let log = api_log(&cluster, prim);
    assert!(
        log.contains("checker tcp.app") && log.contains("action restart"),
        "{log}"
    );
    assert_eq!(cluster.state(prim).unwrap().state, "PRIM");
}

/// A module checker (SafeKit's `<module>`): `demo` depends on the module
/// `dep` of the same node. Stopping `dep` on demo's primary puts demo in
/// WAIT there (the other node takes over); starting it again brings demo
/// back by itself.
#[test]
fn a_module_checker_follows_the_module_it_depends_on() {
    let cluster = common::lab(MirrorOptions {
        tail: r#"
[[checker]]
name = "dep"
type = "module"
module = "dep"
expected = ["PRIM", "ALONE", "SECOND"]
interval = "200ms"
"#
        .into(),
        ..MirrorOptions::default()
    });
    let dep = "[module]\nname = \"dep\"\nmode = \"mirror\"\n\n[heartbeat]\nport = 4802\npulse = \"100ms\"\ntimeout = \"1500ms\"\n\n[[node]]\nname = \"node1\"\naddress = { default = \"198.18.0.11\" }\n\n[[node]]\nname = \"node2\"\naddress = { default = \"198.18.0.12\" }\n";
    for host in ["node1", "node2"] {
        let path = cluster
            .lab
            .host_dir(host)
            .unwrap()
            .join("etc-holdfast/dep.toml");
        std::fs::write(&path, dep).unwrap();
        for args in [
            &["module", "install", "/etc/holdfast/dep.toml"][..],
            &["start", "-m", "dep"],
        ] {
            cluster.run_cli_checked(host, args).unwrap();
        }
    }
    cluster.start_module().unwrap();
    let (prim, second) = cluster.wait_pair(SETTLE).expect("a pair");

    cluster
        .run_cli_checked(prim, &["stop", "-m", "dep"])
        .unwrap();
    let (a, b) = cluster
        .wait_states(SETTLE, |a, b| {
            let (p, s) = if prim == "node1" { (a, b) } else { (b, a) };
            settled(p, "WAIT") && settled(s, "ALONE")
        })
        .unwrap_or_else(|e| {
            panic!(
                "demo waits where dep stopped, the other node takes over: {e}\n{}",
                api_log(&cluster, prim)
            )
        });
    let waiting = if prim == "node1" { a } else { b };
    assert!(
        waiting.unwrap().reason.contains("module.dep"),
        "the reason names the checker"
    );
    assert!(cluster.app_pid(prim).is_none() && cluster.wait_app(second, SETTLE));

    cluster
        .run_cli_checked(prim, &["start", "-m", "dep"])
        .unwrap();
    cluster
        .wait_states(SETTLE, |a, b| {
            let (p, s) = if prim == "node1" { (a, b) } else { (b, a) };
            settled(p, "SECOND") && settled(s, "PRIM")
        })
        .expect("demo comes back by itself");
}
