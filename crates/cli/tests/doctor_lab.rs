//! `holdfast doctor` on real test hosts: it passes a running pair, names a
//! process holding a module's port and a peer it cannot reach, and says
//! when nftables is missing on a farm node.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{lab, replicated, started};
use holdfast_lab::cluster::{settled, FarmOptions, MirrorLab, MirrorOptions};

/// `holdfast doctor` on `host`: its exit code and lines.
fn doctor(cluster: &MirrorLab, host: &str) -> (Option<i32>, String) {
    let Output { status, stdout, .. } = cluster.cli(host, &["doctor"]).expect("doctor runs");
    (status.code(), String::from_utf8_lossy(&stdout).into_owned())
}

/// The line of `check` (the text before its first `: `).
fn line<'a>(report: &'a str, check: &str) -> &'a str {
    report
        .lines()
        .find(|l| {
            l.get(5..)
                .is_some_and(|rest| rest.starts_with(&format!("{check}: ")))
        })
        .unwrap_or_else(|| panic!("no line for {check}:\n{report}"))
}

#[test]
fn doctor_passes_a_pair_and_names_a_port_holder_and_an_unreachable_peer() {
    let (cluster, prim, second) = started(MirrorOptions {
        tail: replicated(4900),
        ..MirrorOptions::default()
    });
    common::mirroring(&cluster, prim);
    let (code, report) = doctor(&cluster, second);
    assert_eq!(
        code,
        Some(0),
        "no failure on a working secondary:\n{report}"
    );
    assert!(!report.contains("FAIL"), "{report}");
    for (check, found) in [
        (
            "fuse",
            "OK   fuse: the kernel's FUSE and /dev/fuse are usable",
        ),
        ("port 4800/udp", "held by the holdfast daemon"),
        ("port 4900/tcp", "held by the holdfast daemon"),
        ("module demo network net0", "heartbeats arrive from"),
        ("nftables", "OK"),
    ] {
        assert!(line(&report, check).contains(found), "{check}:\n{report}");
    }

    // Another process on the primary listening on the replication port,
    // which the primary needs the day it is SECOND.
    let listener = cluster
        .lab
        .run_in_netns(prim, || std::net::TcpListener::bind("0.0.0.0:4900"))
        .unwrap()
        .expect("a foreign listener on 4900");
    let (code, report) = doctor(&cluster, prim);
    let held = line(&report, "port 4900/tcp");
    assert_eq!(code, Some(1), "{report}");
    assert!(
        held.starts_with("FAIL")
            && held.contains(&format!("(pid {})", std::process::id()))
            && held.contains("fix: stop"),
        "{report}"
    );
    drop(listener);

    // The peer cut off: heartbeats no longer arrive, and ping fails.
    cluster.lab.partition(prim, second).expect("partition");
    let alone = cluster.wait_states(common::SETTLE, |a, b| {
        settled(if prim == "node1" { a } else { b }, "ALONE")
    });
    assert!(alone.is_ok(), "the primary notices: {:?}", cluster.states());
    let (code, report) = doctor(&cluster, prim);
    let peer = line(&report, "module demo network net0");
    assert_eq!(code, Some(1), "{report}");
    assert!(
        peer.starts_with("FAIL")
            && peer.contains(&format!("{second} ("))
            && peer.contains("unreachable"),
        "{report}"
    );
}

/// The farm's node1 loses `nft` the way a host without the nftables
/// package has none: in node1's own mount namespace, an overlay over the
/// directory holding `nft` whites the file out, so no process there finds
/// it (node2, and the machine, still have it).
#[test]
fn doctor_on_a_farm_node_without_nftables_says_so() {
    let cluster = lab(MirrorOptions {
        vip: true,
        farm: Some(FarmOptions {
            powers: vec![1, 1],
            rules: String::new(),
        }),
        timeout: Duration::from_millis(1000),
        ..MirrorOptions::default()
    });
    let hide = r#"set -e
dir=$(dirname "$(command -v nft)")
mkdir -p /srv/hide-nft/upper /srv/hide-nft/work
mknod /srv/hide-nft/upper/nft c 0 0
mount -t overlay overlay -o "lowerdir=$dir,upperdir=/srv/hide-nft/upper,workdir=/srv/hide-nft/work" "$dir"
! command -v nft"#;
    common::sh(&cluster, "node1", hide);

    let (code, report) = doctor(&cluster, "node1");
    let nft = line(&report, "nftables");
    assert_eq!(code, Some(1), "{report}");
    assert!(
        nft.starts_with("FAIL nftables: nft not found in PATH")
            && nft.contains("farm modules filter their traffic with it")
            && nft.ends_with("fix: apt install nftables"),
        "{report}"
    );
    let (_, report) = doctor(&cluster, "node2");
    assert!(
        line(&report, "nftables").starts_with("OK"),
        "node2 keeps nft:\n{report}"
    );
}
