//! A farm filter applied for real: two lab nodes hold the VIP, the client
//! sends to the virtual MAC (flooded by the bridge to both), and each node's
//! netdev ingress filter keeps only its buckets. Needs root, iproute2, nft.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use holdfast_lab::{wait_until, Lab, LabSpec};
use holdfast_network::farm::{format_mac, Balance, BucketMap, FarmFilter, Member, Protocol, Rule};
use holdfast_network::Vip;

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
    for node in NODES {
        // The VIP on lo, ARP for it never answered by the kernel (the daemon
        // will answer with the VMAC), ARP requests sourced from the real
        // address rather than the VIP.
        let sysctls = "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2";
        run_on(&lab, node, "sh", &["-c", sysctls], "");
        lab.run_in_netns(node, || Vip::add("lo", VIP, 32))
            .unwrap()
            .unwrap();
        run_on(
            &lab,
            node,
            "nft",
            &["-f", "-"],
            &filter.ruleset(&buckets.buckets_of(node)),
        );
        let listener = lab
            .run_in_netns(node, || TcpListener::bind((VIP, PORT)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        listeners.push(listener);
    }
    // Stands in for the daemon's ARP answer: the client maps VIP -> VMAC.
    let neigh = format!(
        "neigh replace {VIP} lladdr {} dev eth0 nud permanent\n",
        format_mac(&VMAC)
    );
    run_on(&lab, "client", "ip", &["-batch", "-"], &neigh);

    let ok = client_connections(&lab, CONNECTIONS);
    let counts: Vec<usize> = listeners.iter().map(accepted).collect();
    eprintln!("split of {CONNECTIONS} connections: {counts:?}");
    assert_eq!(ok, CONNECTIONS, "connections failed (split {counts:?})");
    assert_eq!(counts.iter().sum::<usize>(), CONNECTIONS, "{counts:?}");
    // Each node owns half the buckets; 100 random source ports land far
    // from all-on-one (a failure here at 20 has probability < 1e-9).
    assert!(counts.iter().all(|&c| c >= 20), "{counts:?}");

    // Membership change: node2 leaves; only the sets are replaced.
    let alone = BucketMap::assign(&members[..1]).unwrap();
    for node in NODES {
        let script = filter.owned_update(&alone.buckets_of(node));
        run_on(&lab, node, "nft", &["-f", "-"], &script);
    }
    let ok = client_connections(&lab, 20);
    let counts: Vec<usize> = listeners.iter().map(accepted).collect();
    assert_eq!((ok, counts.clone()), (20, vec![20, 0]), "{counts:?}");

    for node in NODES {
        run_on(&lab, node, "nft", &["-f", "-"], &filter.removal());
        let tables = run_on(&lab, node, "nft", &["list", "tables"], "");
        assert!(!tables.contains("holdfast_farm"), "{tables}");
    }
    lab.destroy().unwrap();
}
