//! Clients of a mirror module on real test hosts: the virtual IP follows the
//! primary (netlink address + gratuitous ARP), and in cloud mode the health
//! endpoint tells a load balancer which node serves.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{holds_vip, started, SETTLE};
use holdfast_lab::cluster::{settled, MirrorLab, MirrorOptions, APP_PORT, HEALTH_PORT, VIP};

/// One request from the client host to the VIP: the name of the node that answered.
fn ask(cluster: &MirrorLab) -> Option<String> {
    cluster
        .lab
        .run_in_netns("client", || {
            let stream = TcpStream::connect_timeout(
                &SocketAddr::from((VIP, APP_PORT)),
                Duration::from_millis(300),
            )
            .ok()?;
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .ok()?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).ok()?;
            Some(line.trim().to_string())
        })
        .expect("client namespace")
}

/// Polls the VIP until `node` answers (bounded), then checks that the next
/// requests all succeed and all come from `node`. Returns the outage.
fn follows(cluster: &MirrorLab, node: &str, since: Instant) -> Duration {
    let reached = holdfast_lab::wait_until(SETTLE, Duration::from_millis(20), || {
        ask(cluster).as_deref() == Some(node)
    });
    assert!(reached, "clients reach {node} through the VIP");
    let outage = since.elapsed();
    for i in 0..20 {
        assert_eq!(
            ask(cluster).as_deref(),
            Some(node),
            "request {i} after the takeover"
        );
    }
    outage
}

#[test]
fn the_virtual_ip_follows_the_primary_through_failover_and_swap() {
    let (mut cluster, prim, second) = started(MirrorOptions {
        vip: true,
        ..MirrorOptions::default()
    });
    assert!(
        holds_vip(&cluster, prim) && !holds_vip(&cluster, second),
        "only the primary holds the VIP"
    );
    assert_eq!(ask(&cluster).as_deref(), Some(prim));

    // Crash of the primary's host: the survivor takes the VIP and announces it.
    let crash = Instant::now();
    cluster.kill(prim).unwrap();
    follows(&cluster, second, crash);
    assert!(holds_vip(&cluster, second));

    // The crashed host returns: its module starts by releasing the address
    // its previous life left behind, and rejoins as SECOND.
    cluster.start_daemon(prim).unwrap();
    cluster
        .wait_states(SETTLE, |a, b| {
            let (p, s) = if prim == "node1" { (a, b) } else { (b, a) };
            settled(p, "SECOND") && settled(s, "PRIM")
        })
        .unwrap();
    assert!(
        !holds_vip(&cluster, prim),
        "the returning node released the VIP"
    );

    // A swap moves it back.
    let swap = Instant::now();
    cluster
        .run_cli_checked(second, &["swap", "-m", "demo"])
        .unwrap();
    follows(&cluster, prim, swap);
    assert!(
        holds_vip(&cluster, prim) && !holds_vip(&cluster, second),
        "the old primary released the VIP"
    );
}

/// `GET /` on a node's health endpoint, from the client host: the status code.
fn health(cluster: &MirrorLab, host: &str) -> Option<u16> {
    let address = cluster.lab.address(host, 0).unwrap();
    cluster
        .lab
        .run_in_netns("client", || {
            let mut stream = TcpStream::connect_timeout(
                &SocketAddr::from((address, HEALTH_PORT)),
                Duration::from_millis(500),
            )
            .ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            stream
                .write_all(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
                .ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).ok()?;
            answer.split_whitespace().nth(1)?.parse().ok()
        })
        .expect("client namespace")
}

#[test]
fn the_health_endpoint_answers_200_on_the_primary_only() {
    let (mut cluster, prim, second) = started(MirrorOptions {
        health: true,
        ..MirrorOptions::default()
    });
    assert_eq!(
        (health(&cluster, prim), health(&cluster, second)),
        (Some(200), Some(503))
    );

    cluster.kill(prim).unwrap();
    let moved = holdfast_lab::wait_until(SETTLE, Duration::from_millis(50), || {
        health(&cluster, second) == Some(200)
    });
    assert!(moved, "the survivor answers 200 after the failover");
    assert_eq!(
        health(&cluster, prim),
        None,
        "the dead node answers nothing"
    );

    cluster.start_daemon(prim).unwrap();
    let back = holdfast_lab::wait_until(SETTLE, Duration::from_millis(50), || {
        health(&cluster, prim) == Some(503)
    });
    assert!(back, "the returning SECOND answers 503");
    assert_eq!(health(&cluster, second), Some(200));
}
