//! Floods are summarised, not echoed: junk sent to a secondary's
//! replication and heartbeat ports, and forged lease requests sent to the
//! witness, are each refused and accounted for, in a bounded number of log
//! lines (the first at once, then a count per window), while the real
//! peer still connects and mirrors.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::{identical, logs, mirroring, replicated, sh, started, DATA, SETTLE};
use holdfast_key::ClusterKey;
use holdfast_lab::cluster::{settled, MirrorOptions, WITNESS_PORT};
use holdfast_lab::{wait_until, CLIENT};
use holdfast_membership::lease::{LeaseRequest, PeerCopy};
use holdfast_membership::mirror::PeerStatus;
use holdfast_membership::{Heartbeat, HeartbeatStatus};

/// Junk of each kind sent.
const FLOOD: u64 = 200;
/// The summaries' window (`holdfast_daemon::refusals::WINDOW`) and more.
const SUMMARISED: Duration = Duration::from_secs(30);

/// The refusals of `what` from `from` that `log`'s lines account for: the
/// number of lines, and the refusals they count (a first line counts one,
/// a summary its number).
fn accounted(log: &str, what: &str, from: Ipv4Addr) -> (usize, u64) {
    let prefix = format!("refused {what} from {from}");
    let mut lines = 0;
    let mut count = 0;
    for line in log.lines().filter(|l| l.contains(&prefix)) {
        lines += 1;
        let rest = &line[line.find(&prefix).unwrap() + prefix.len()..];
        count += match rest.strip_prefix(' ') {
            // "refused X from A 41 more times in the last 10 s (...)"
            Some(summary) => summary
                .split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("a count in {line:?}")),
            // "refused X from A:port: reason"
            None => 1,
        };
    }
    (lines, count)
}

#[test]
fn floods_of_junk_are_counted_in_a_few_lines_and_the_peer_still_mirrors() {
    let (cluster, prim, second) = started(MirrorOptions {
        tail: replicated(4900),
        witness_lease: Some(Duration::from_secs(3)),
        ..MirrorOptions::default()
    });
    mirroring(&cluster, prim);
    let target = cluster.lab.address(second, 0).unwrap();
    let client = cluster.lab.address(CLIENT, 0).unwrap();
    let forged_heartbeat = Heartbeat {
        module: "demo".into(),
        sender: prim.into(),
        incarnation: 1,
        seq: 1,
        network: 0,
        config_fingerprint: [0; 8],
        status: HeartbeatStatus::Mirror(PeerStatus::stopped()),
    }
    .encode(&ClusterKey::generate());
    let forged_request = LeaseRequest {
        module: "demo".into(),
        node: prim.into(),
        incarnation: 1,
        id: 1,
        duration_ms: 1000,
        peer_copy: PeerCopy::Current,
    }
    .encode(&ClusterKey::generate());

    // The flood, paced over a few seconds, while the application writes
    // on the primary: mirroring goes on through it.
    let flood = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            cluster.lab.run_in_netns(CLIENT, || {
                let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
                let mut connected = 0u64;
                for _ in 0..FLOOD {
                    let junk = SocketAddr::from((target, 4900));
                    if let Ok(mut c) = TcpStream::connect_timeout(&junk, Duration::from_secs(2)) {
                        connected += 1;
                        let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
                    }
                    udp.send_to(&forged_heartbeat, (target, 4800)).unwrap();
                    udp.send_to(&forged_request, (client, WITNESS_PORT))
                        .unwrap();
                    // Paced, so the writes below meet the flood.
                    std::thread::sleep(Duration::from_millis(20));
                }
                connected
            })
        });
        sh(
            &cluster,
            prim,
            &format!("for i in $(seq 50); do echo $i >> {DATA}/during; sleep 0.05; done"),
        );
        flood.join().unwrap().unwrap()
    });
    assert_eq!(flood, FLOOD, "every junk connection reached the receiver");
    identical(&cluster);

    // The real peer connects again after the flood, and mirrors.
    cluster
        .run_cli_checked(second, &["stop", "-m", "demo"])
        .expect("stop the secondary");
    let stopped = cluster.wait_states(SETTLE, |a, b| {
        settled(if second == "node1" { a } else { b }, "STOP")
    });
    assert!(stopped.is_ok(), "{}", logs(&cluster));
    cluster
        .run_cli_checked(second, &["start", "-m", "demo"])
        .expect("start the secondary");
    mirroring(&cluster, prim);
    sh(&cluster, prim, &format!("echo after-the-flood > {DATA}/f"));
    identical(&cluster);

    // Every refusal accounted for, in a few lines each.
    let kinds = ["replication connection", "heartbeat"];
    let summarised = wait_until(SUMMARISED, Duration::from_millis(200), || {
        let log = cluster.module_log(second);
        kinds
            .iter()
            .all(|what| accounted(&log, what, client).1 >= FLOOD)
    });
    let log = cluster.module_log(second);
    assert!(summarised, "every refusal counted:\n{log}");
    for what in kinds {
        let (lines, count) = accounted(&log, what, client);
        assert_eq!(count, FLOOD, "{what}:\n{log}");
        assert!(lines <= 4, "{lines} lines for {what}:\n{log}");
    }
    let peer = cluster.lab.address(prim, 0).unwrap();
    let received = format!("from {peer}");
    let flood_began = log
        .lines()
        .position(|l| l.contains("refused replication connection"))
        .unwrap();
    assert!(
        log.lines()
            .skip(flood_began)
            .any(|l| l.contains("receiving replication of") && l.contains(&received)),
        "the real peer was received after the flood:\n{log}"
    );

    let witness_log = cluster.lab.host_dir(CLIENT).unwrap().join("witness.log");
    let summarised = wait_until(SUMMARISED, Duration::from_millis(200), || {
        let log = std::fs::read_to_string(&witness_log).unwrap_or_default();
        accounted(&log, "lease request", client).1 >= FLOOD
    });
    let log = std::fs::read_to_string(&witness_log).unwrap_or_default();
    assert!(summarised, "every forged lease request counted:\n{log}");
    let (lines, count) = accounted(&log, "lease request", client);
    assert_eq!(count, FLOOD, "{log}");
    assert!(lines <= 4, "{lines} lines:\n{log}");
}
