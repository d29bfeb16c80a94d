//! A farm node's kernel side applied for real: two lab nodes hold the VIP
//! on `lo`, answer ARP for it with the virtual MAC, the client sends to that
//! MAC (flooded by the bridge to both), and each node's filter keeps only
//! its buckets. Needs root, iproute2, nft.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use holdfast_config::{Balance, Protocol, Rule};
use holdfast_lab::{wait_until, Lab, LabSpec};
use holdfast_membership::farm::buckets::{BucketMap, Member};
use holdfast_network::farm::FarmFilter;
use holdfast_network::{FarmNode, Vip};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);
/// Locally administered, never a source address: the bridge floods it.
const VMAC: [u8; 6] = [0x02, 0x48, 0x46, 0x00, 0x00, 0x32];
const PORT: u16 = 9010;
const NODES: [&str; 2] = ["node1", "node2"];
/// Connections of the split; below the listeners' backlog (128), so none
/// waits for an accept.
const CONNECTIONS: usize = 100;

/// Runs `program args` in `host`'s namespaces with `stdin`, at most 20 s.
fn run_on(lab: &Lab, host: &str, program: &str, args: &[&str], stdin: &str) -> String {
    let mut child = lab
        .command(host, program)
        .unwrap()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let finished = wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
        child.try_wait().unwrap().is_some()
    });
    if !finished {
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        finished && out.status.success(),
        "{program} {args:?} on {host} failed"
    );
    String::from_utf8(out.stdout).unwrap()
}

fn accepted(listener: &TcpListener) -> usize {
    (0..=CONNECTIONS)
        .take_while(|_| listener.accept().is_ok())
        .count()
}

/// Opens `n` connections from the client, one after the other (each from a
/// new source port); returns how many succeeded.
fn client_connections(lab: &Lab, n: usize) -> usize {
    let script = format!(
        "ok=0; for i in $(seq {n}); do timeout 1 bash -c 'echo hi > /dev/tcp/{VIP}/{PORT}' 2>/dev/null && ok=$((ok+1)); done; echo $ok"
    );
    run_on(lab, "client", "bash", &["-c", &script], "")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn nft_filter_splits_connections_between_two_nodes() {
    let lab = Lab::create(LabSpec {
        hosts: 2,
        networks: 1,
        client: true,
    })
    .unwrap();
    let members: Vec<Member> = NODES.iter().map(|n| Member::new(*n, 1)).collect();
    let buckets = BucketMap::assign(&members).unwrap();
    let rule = Rule {
        protocol: Protocol::Tcp,
        port: Some(PORT),
        balance: Balance::ClientIpPort,
    };
    let filter = FarmFilter::new("holdfast_farm", "eth0", VIP, VMAC, vec![rule]).unwrap();

    let mut listeners = Vec::new();
    let mut farm_nodes = Vec::new();
    for node in NODES {
        let mut farm_node = lab
            .run_in_netns(node, || FarmNode::start(filter.clone()))
            .unwrap()
            .unwrap();
        lab.run_in_netns(node, || farm_node.program(&buckets.buckets_of(node)))
            .unwrap()
            .unwrap();
        farm_nodes.push(farm_node);
        let listener = lab
            .run_in_netns(node, || TcpListener::bind((VIP, PORT)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        listeners.push(listener);
    }

    let ok = client_connections(&lab, CONNECTIONS);
    let counts: Vec<usize> = listeners.iter().map(accepted).collect();
    eprintln!("split of {CONNECTIONS} connections: {counts:?}");
    assert_eq!(ok, CONNECTIONS, "connections failed (split {counts:?})");
    assert_eq!(counts.iter().sum::<usize>(), CONNECTIONS, "{counts:?}");
    // Each node owns half the buckets; 100 random source ports land far
    // from all-on-one (a failure here at 20 has probability < 1e-9).
    assert!(counts.iter().all(|&c| c >= 20), "{counts:?}");

    // The client learnt the VIP at the virtual MAC, from the responders.
    let neighbour = run_on(
        &lab,
        "client",
        "ip",
        &["neigh", "show", &VIP.to_string()],
        "",
    );
    assert!(neighbour.contains("02:48:46:00:00:32"), "{neighbour}");

    // Membership change: node2 leaves; the tables are replaced.
    let alone = BucketMap::assign(&members[..1]).unwrap();
    for (node, farm_node) in NODES.iter().zip(&mut farm_nodes) {
        lab.run_in_netns(node, || farm_node.program(&alone.buckets_of(node)))
            .unwrap()
            .unwrap();
    }
    let ok = client_connections(&lab, 20);
    let counts: Vec<usize> = listeners.iter().map(accepted).collect();
    assert_eq!((ok, counts.clone()), (20, vec![20, 0]), "{counts:?}");

    drop(listeners);
    for (node, farm_node) in NODES.iter().zip(farm_nodes) {
        lab.run_in_netns(node, || farm_node.stop())
            .unwrap()
            .unwrap();
        let tables = run_on(&lab, node, "nft", &["list", "tables"], "");
        assert!(!tables.contains("holdfast_farm"), "{tables}");
        let held = lab.run_in_netns(node, || Vip::holds("lo", VIP)).unwrap();
        assert!(!held.unwrap(), "the VIP is still on lo of {node}");
    }
    lab.destroy().unwrap();
}
