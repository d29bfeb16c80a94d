//! The mirror module on real test hosts: network namespaces on a bridge, a
//! real daemon per host, the real CLI, the sample application's scripts.
//! Needs root, iproute2, util-linux and nftables (see `.ci/run`).

mod common;

use std::time::Duration;

use common::{api_log, lab, SETTLE};
use holdfast_key::ClusterKey;
use holdfast_lab::cluster::{settled, MirrorLab, MirrorOptions};
use holdfast_membership::{Heartbeat, PeerStatus, State};

fn start_both(cluster: &MirrorLab) {
    cluster.start_module().expect("start");
}

/// Waits for a settled PRIM/SECOND pair; returns (primary, secondary).
fn pair(cluster: &MirrorLab) -> (&'static str, &'static str) {
    cluster.wait_pair(SETTLE).expect("a PRIM and a SECOND")
}

fn count(cluster: &MirrorLab, host: &str, script: &str) -> usize {
    cluster
        .events(host)
        .iter()
        .filter(|(_, s, args)| s == script && !args.starts_with("force"))
        .count()
}

#[test]
fn start_failover_and_rejoin() {
    let mut cluster = lab(MirrorOptions::default());
    start_both(&cluster);
    let (prim, second) = pair(&cluster);
    assert!(
        cluster.wait_app(prim, SETTLE),
        "the application runs on the PRIM"
    );
    assert_eq!(count(&cluster, prim, "start_prim"), 1);
    assert_eq!(
        count(&cluster, second, "start_prim"),
        0,
        "start_prim never ran on the SECOND"
    );
    assert!(cluster.app_pid(second).is_none());
    // SafeKit's `state -lq`: the state word and its exit code.
    for (host, word, code) in [(prim, "PRIM", 3), (second, "SECOND", 4)] {
        let out = cluster.cli(host, &["state", "-m", "demo", "-lq"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), word);
        assert_eq!(out.status.code(), Some(code));
    }
    // start_prim wrote to the module log with `"$SAFE/safekit" printi`.
    assert!(api_log(&cluster, prim).contains("sample application started"));

    // The primary's host crashes: daemon and application killed.
    cluster.kill(prim).unwrap();
    let (a, b) = cluster
        .wait_states(SETTLE, |a, b| {
            let survivor = if prim == "node1" { b } else { a };
            settled(survivor, "ALONE")
        })
        .unwrap();
    let crashed_state = if prim == "node1" { a } else { b };
    assert!(
        crashed_state.is_none(),
        "the crashed daemon does not answer"
    );
    assert!(
        cluster.wait_app(second, SETTLE),
        "the survivor runs the application"
    );
    assert_eq!(count(&cluster, second, "start_prim"), 1);
    assert!(
        api_log(&cluster, second).contains("becoming primary"),
        "the takeover is logged with its reason"
    );

    // The failed host comes back and rejoins as SECOND; nothing starts twice.
    cluster.start_daemon(prim).unwrap();
    let (new_prim, new_second) = pair(&cluster);
    assert_eq!(
        (new_prim, new_second),
        (second, prim),
        "the survivor stays primary"
    );
    assert_eq!(
        count(&cluster, prim, "start_prim"),
        1,
        "no new start_prim on the returning node"
    );
    assert_eq!(count(&cluster, second, "start_prim"), 1);
    assert!(cluster.app_pid(prim).is_none());
    assert!(cluster.app_pid(second).is_some());
}

#[test]
fn swap_and_clean_stop_hand_over() {
    let cluster = lab(MirrorOptions::default());
    start_both(&cluster);
    let (prim, second) = pair(&cluster);

    cluster
        .run_cli_checked(second, &["swap", "-m", "demo"])
        .expect("swap from the SECOND");
    cluster
        .wait_states(SETTLE, |a, b| {
            let (p, s) = if prim == "node1" { (a, b) } else { (b, a) };
            settled(p, "SECOND") && settled(s, "PRIM")
        })
        .expect("the primary moved");
    assert!(cluster.wait_app(second, SETTLE));
    assert!(
        cluster.app_pid(prim).is_none(),
        "the old primary stopped its application"
    );
    let stops = cluster.events(prim);
    assert!(
        stops
            .iter()
            .any(|(_, s, a)| s == "stop_prim" && a.starts_with("force")),
        "forced stop phase ran: {stops:?}"
    );

    // A clean stop of the primary hands over at once (well before the timeout).
    cluster
        .run_cli_checked(second, &["stop", "-m", "demo"])
        .expect("stop");
    let (a, b) = cluster
        .wait_states(SETTLE, |a, b| {
            let (stopped, other) = if second == "node1" { (a, b) } else { (b, a) };
            settled(stopped, "STOP") && settled(other, "ALONE")
        })
        .expect("stop hands over");
    let other = if second == "node1" { b } else { a };
    assert!(
        other.unwrap().reason.contains("stop"),
        "the reason says the peer stopped"
    );
    assert!(cluster.wait_app(prim, SETTLE));
    assert!(cluster.app_pid(second).is_none());

    // A refused command says why and changes nothing.
    let out = cluster.cli(prim, &["swap", "-m", "demo"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("swap needs a PRIM and a SECOND"));
    assert_eq!(cluster.state(prim).unwrap().state, "ALONE");
}

#[test]
fn link_cut_fails_over_and_heal_keeps_one_primary() {
    let cluster = lab(MirrorOptions::default());
    start_both(&cluster);
    let (prim, second) = pair(&cluster);

    cluster.lab.link_down(prim, 0).unwrap();
    cluster
        .wait_states(SETTLE, |a, b| settled(a, "ALONE") && settled(b, "ALONE"))
        .expect("both sides ALONE during the partition (no witness)");
    assert!(cluster.wait_app(second, SETTLE), "the secondary took over");

    cluster.lab.link_up(prim, 0).unwrap();
    let (new_prim, _) = pair(&cluster);
    assert_eq!(
        new_prim, second,
        "the node that took over last keeps the primary role"
    );
    assert!(
        cluster.app_pid(prim).is_none(),
        "the loser stopped its application"
    );
    assert!(cluster.app_pid(second).is_some());
    let log = api_log(&cluster, prim);
    assert!(log.contains("split brain"), "the loser says why: {log}");
}

#[test]
fn one_heartbeat_network_down_keeps_the_pair() {
    let cluster = lab(MirrorOptions {
        networks: 2,
        ..MirrorOptions::default()
    });
    start_both(&cluster);
    let (prim, second) = pair(&cluster);
    cluster.lab.link_down(prim, 0).unwrap();
    // Longer than the timeout: the second network keeps the module connected.
    cluster
        .wait_states(SETTLE, |a, b| {
            let s = if second == "node1" { a } else { b };
            s.as_ref().is_some_and(|s| s.networks_up == [false, true])
        })
        .expect("network 0 seen down");
    std::thread::sleep(cluster.options.timeout * 2);
    assert_eq!(
        pair(&cluster),
        (prim, second),
        "no failover while one network works"
    );
    assert_eq!(count(&cluster, second, "start_prim"), 0);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let cluster = lab(MirrorOptions::default());
    start_both(&cluster);
    let (prim, _) = pair(&cluster);
    let before = cluster.state(prim).unwrap();

    // A malformed configuration names file, line and field.
    let dir = cluster
        .lab
        .host_dir(prim)
        .unwrap()
        .join("etc-holdfast/demo");
    let good = std::fs::read_to_string(dir.join("module.toml")).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        good.replace("pulse = \"100ms\"", "pulse = 100"),
    )
    .unwrap();
    let out = cluster
        .cli(prim, &["module", "install", "/etc/holdfast/demo/bad.toml"])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml:") && err.contains("heartbeat.pulse"),
        "{err}"
    );
    let line = good.lines().position(|l| l.starts_with("pulse")).unwrap() + 1;
    assert!(
        err.contains(&format!("bad.toml:{line}:")),
        "line {line} named: {err}"
    );

    // An unknown module.
    let out = cluster.cli(prim, &["start", "-m", "nosuch"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no module named nosuch"));

    // A forged heartbeat (wrong key) claiming the peer is stopped.
    let target = cluster.lab.address(prim, 0).unwrap();
    let forged = Heartbeat {
        module: "demo".into(),
        sender: "node2".into(),
        incarnation: u64::MAX,
        seq: 1,
        network: 0,
        config_fingerprint: [0; 8],
        status: holdfast_membership::HeartbeatStatus::Mirror(PeerStatus::stopped()),
    }
    .encode(&ClusterKey::generate());
    cluster
        .lab
        .run_in_netns("client", || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.send_to(&forged, (target, 4800)).unwrap();
        })
        .unwrap();
    let logged =
        holdfast_lab::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            api_log(&cluster, prim).contains("refused heartbeat")
        });
    assert!(logged, "the forged heartbeat is logged");
    assert!(api_log(&cluster, prim).contains("authentication failed"));

    let after = cluster.state(prim).unwrap();
    assert_eq!(
        (after.state.as_str(), after.app_active),
        (before.state.as_str(), before.app_active)
    );
    assert_eq!(State::Prim.as_str(), after.state);
}

#[test]
fn orderly_daemon_shutdown_hands_over_and_restart_rejoins() {
    let mut cluster = lab(MirrorOptions {
        timeout: Duration::from_secs(20),
        ..MirrorOptions::default()
    });
    start_both(&cluster);
    let (prim, second) = pair(&cluster);
    let started = std::time::Instant::now();
    cluster.terminate(prim).unwrap();
    cluster
        .wait_states(SETTLE, |a, b| {
            settled(if prim == "node1" { b } else { a }, "ALONE")
        })
        .expect("the secondary takes over");
    assert!(
        started.elapsed() < cluster.options.timeout,
        "a stopping primary hands over at once, without waiting for the heartbeat timeout"
    );
    assert!(cluster.wait_app(second, SETTLE));
    assert!(
        cluster.app_pid(prim).is_none(),
        "SIGTERM stopped the application with the module"
    );
    // boot = "auto": the module was running, so it starts again with the daemon.
    cluster.start_daemon(prim).unwrap();
    assert_eq!(pair(&cluster), (second, prim));
}

/// A rolling change of configuration: the module is stopped on the
/// secondary, installed again there and started, while the primary runs
/// on. The new module numbers its heartbeats afresh; the primary must
/// still take them (it takes only heartbeats newer than the last of each
/// node) and the pair forms again at once.
#[test]
fn a_module_installed_again_on_one_node_is_heard_by_its_peer() {
    let cluster = lab(MirrorOptions::default());
    start_both(&cluster);
    let (prim, second) = pair(&cluster);
    cluster
        .run_cli_checked(second, &["stop", "-m", "demo"])
        .expect("stop the secondary");
    cluster
        .wait_states(SETTLE, |a, b| {
            let (p, s) = if prim == "node1" { (a, b) } else { (b, a) };
            settled(p, "ALONE") && settled(s, "STOP")
        })
        .expect("the primary goes on alone");
    cluster
        .run_cli_checked(
            second,
            &["module", "install", "/etc/holdfast/demo/module.toml"],
        )
        .expect("install again");
    cluster
        .run_cli_checked(second, &["start", "-m", "demo"])
        .expect("start");
    assert_eq!(pair(&cluster), (prim, second), "the pair forms again");
    let log = api_log(&cluster, prim);
    assert!(
        !log.contains("replayed"),
        "the primary took every heartbeat:\n{log}"
    );
}
