//! Split-brain protection on real test hosts: two nodes and `holdfast
//! witness` on a third host (the client), real partitions by nftables drop
//! rules at seeded random moments, and a watcher polling both nodes all the
//! while: never both running the sample application nor both holding the
//! virtual IP. A partition isolating the primary from its peer and the
//! witness makes it step down, and the other takes over. Without a
//! witness, a split brain is detected at heal, in the roles and in the data.
//!
//! Reproduce a run: `HOLDFAST_LAB_SEED=<seed>` (printed at the start).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{holds_vip, ordered, replicated, sh_command, DATA, SETTLE};
use holdfast_lab::cluster::{settled, MirrorLab, MirrorOptions};
use holdfast_lab::CLIENT;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROUNDS: usize = 10;

fn runs_app(cluster: &MirrorLab, host: &str) -> bool {
    cluster.app_pid(host).is_some()
}

/// Waits until `prim` waits without its application and the other node
/// runs it ALONE.
fn stepped_down(cluster: &MirrorLab, prim: &str) -> holdfast_lab::Result<()> {
    cluster
        .wait_states(SETTLE, |a, b| {
            let (p, s) = ordered(prim, a, b);
            p.as_ref()
                .is_some_and(|p| p.state == "WAIT" && !p.app_active)
                && settled(s, "ALONE")
                && s.as_ref().is_some_and(|s| s.app_active)
        })
        .map(drop)
}

/// Partitions (each undone by `heal`) of one round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    /// Only between the nodes: both still reach the witness.
    Nodes,
    /// The primary from its peer and from the witness.
    IsolatePrimary,
    /// The secondary from its peer and from the witness.
    IsolateSecondary,
}

impl Cut {
    fn pairs(self, prim: &'static str, second: &'static str) -> Vec<(&'static str, &'static str)> {
        match self {
            Cut::Nodes => vec![(prim, second)],
            Cut::IsolatePrimary => vec![(prim, second), (prim, CLIENT)],
            Cut::IsolateSecondary => vec![(prim, second), (second, CLIENT)],
        }
    }
}

/// Ends the watcher when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn ten_partitions_with_a_witness_never_show_two_holders() {
    let seed = std::env::var("HOLDFAST_LAB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("witness lab: seed {seed} (HOLDFAST_LAB_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let (cluster, mut prim, mut second) = common::started(MirrorOptions {
        pulse: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        vip: true,
        witness_lease: Some(Duration::from_secs(2)),
        ..MirrorOptions::default()
    });

    let stop = AtomicBool::new(false);
    let violations = Mutex::new(Vec::<String>::new());
    let polls = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let start = Instant::now();
            let mut polls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let apps = ["node1", "node2"].map(|h| runs_app(&cluster, h));
                let vips = ["node1", "node2"].map(|h| holds_vip(&cluster, h));
                if apps == [true, true] || vips == [true, true] {
                    violations.lock().unwrap().push(format!(
                        "at {:?}: application on both {}, VIP on both {}",
                        start.elapsed(),
                        apps == [true, true],
                        vips == [true, true]
                    ));
                }
                polls += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            polls
        });
        // Also on a failed assertion: the scope joins the watcher.
        let _stop = StopOnDrop(&stop);
        for round in 0..ROUNDS {
            // At least two rounds isolate the primary; the others draw.
            let cut = match (round, rng.gen_range(0..3)) {
                (2 | 6, _) | (_, 1) => Cut::IsolatePrimary,
                (_, 0) => Cut::Nodes,
                _ => Cut::IsolateSecondary,
            };
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..800)));
            let pairs = cut.pairs(prim, second);
            for (a, b) in &pairs {
                cluster.lab.partition(a, b).expect("partition");
            }
            let held = Duration::from_millis(rng.gen_range(300..2500));
            eprintln!("round {round}: {cut:?} (primary {prim}) for {held:?}");
            if cut == Cut::IsolatePrimary {
                // The old primary steps down, and only then the other takes over.
                stepped_down(&cluster, prim)
                    .unwrap_or_else(|e| panic!("round {round} (seed {seed}): {e}"));
                assert!(!runs_app(&cluster, prim) && runs_app(&cluster, second));
            } else {
                std::thread::sleep(held);
            }
            for (a, b) in &pairs {
                cluster.lab.heal(a, b).expect("heal");
            }
            (prim, second) = cluster
                .wait_pair(SETTLE)
                .unwrap_or_else(|e| panic!("round {round} (seed {seed}): after the heal: {e}"));
            if cut == Cut::IsolatePrimary {
                assert_ne!(
                    pairs[0].0, prim,
                    "round {round}: the node that stepped down came back as SECOND"
                );
            }
            assert!(
                cluster.wait_app(prim, SETTLE),
                "round {round}: the application runs on the PRIM {prim}"
            );
        }
        drop(_stop);
        watcher.join().expect("watcher")
    });
    let violations = violations.into_inner().unwrap();
    eprintln!(
        "witness lab: {ROUNDS} partitions, {polls} polls of both nodes, {} violations",
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "seed {seed}: two holders at once: {violations:#?}"
    );
    let stepped_down = cluster.module_log("node1") + &cluster.module_log("node2");
    assert!(
        stepped_down.contains("neither") && stepped_down.contains("witness"),
        "the step-down is logged with its reason"
    );
}

/// Without a witness, a partition gives two primaries; at heal the split
/// brain is detected by the state machine (one primary kept) and by the
/// data generations (both copies changed): the kept primary refuses to
/// resynchronise and names the command that chooses, and the other copy is
/// left as it is — never merged, never silently overwritten.
#[test]
fn without_a_witness_a_split_brain_is_detected_at_heal_and_no_copy_is_overwritten() {
    let (cluster, prim, second) = replicated_pair(None);

    cluster.lab.partition(prim, second).expect("partition");
    cluster
        .wait_states(SETTLE, |a, b| settled(a, "ALONE") && settled(b, "ALONE"))
        .expect("both ALONE during the partition");
    // The isolated primary has stopped mirroring and tracks changes alone.
    cluster
        .wait_states(SETTLE, |a, b| {
            let (p, _) = ordered(prim, a, b);
            settled(p, "ALONE")
                && holdfast_lab::cluster::replicating(p, "tracking")
                && p.as_ref().is_some_and(|p| p.app_active)
        })
        .expect("the isolated primary runs and tracks alone");
    // Each side's application changes its copy.
    for host in [prim, second] {
        let out = cluster
            .sh(host, &format!("echo {host} > {DATA}/written-by-{host}"))
            .expect("sh");
        assert!(out.status.success(), "write on {host}: {out:?}");
    }
    cluster.lab.heal(prim, second).expect("heal");

    // The node that took over last keeps the primary role.
    let (kept, lost) = cluster.wait_pair(SETTLE).expect("one PRIM, one SECOND");
    assert_eq!(kept, second);
    assert!(cluster.module_log(lost).contains("split brain"));
    let refused = holdfast_lab::wait_until(SETTLE, Duration::from_millis(50), || {
        cluster.replication_problem(kept, &["split brain", "--discard-data"])
    });
    assert!(
        refused,
        "the kept primary reports the split brain of the data and the command; log:\n{}",
        cluster.module_log(kept)
    );
    let lost_copy = cluster.host_path(lost, DATA).expect("host dir");
    assert!(
        lost_copy.join(format!("written-by-{lost}")).exists()
            && !lost_copy.join(format!("written-by-{kept}")).exists(),
        "the other copy is left as it was"
    );
}

/// The split-brain checker (SafeKit's `<splitbrain>`, the weaker
/// tie-breaker): the client host is the address both nodes ping. Cut the
/// primary from its peer and from it: the primary stops its application and
/// waits, the secondary, which still pings it, takes over.
#[test]
fn the_splitbrain_checker_hands_a_partition_to_the_side_that_pings() {
    // The client host's address on network 0 (see `LabHandle::address`).
    let (cluster, prim, second) = common::started(MirrorOptions {
        pulse: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        vip: true,
        tail: "\n[splitbrain]\nping = [\"198.18.0.100\"]\n".into(),
        ..MirrorOptions::default()
    });
    assert_eq!(
        cluster.lab.address(CLIENT, 0).unwrap().to_string(),
        "198.18.0.100"
    );

    cluster.lab.partition(prim, second).expect("partition");
    cluster.lab.partition(prim, CLIENT).expect("partition");
    stepped_down(&cluster, prim)
        .expect("the side that cannot ping steps down, the other takes over");
    assert!(!runs_app(&cluster, prim) && !holds_vip(&cluster, prim));
    assert!(cluster
        .module_log(prim)
        .contains("no witness answers the ping"));

    cluster.lab.heal(prim, second).expect("heal");
    cluster.lab.heal(prim, CLIENT).expect("heal");
    let (kept, _) = cluster.wait_pair(SETTLE).expect("one PRIM, one SECOND");
    assert_eq!(kept, second);
}

/// A started pair with `DATA` replicated, mirroring; a witness granting
/// leases of `witness_lease`, if any.
fn replicated_pair(witness_lease: Option<Duration>) -> (MirrorLab, &'static str, &'static str) {
    let (cluster, prim, second) = common::started(MirrorOptions {
        pulse: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        witness_lease,
        tail: replicated(4900),
        ..MirrorOptions::default()
    });
    assert!(
        mirroring(&cluster, prim),
        "the pair mirrors before the partition"
    );
    (cluster, prim, second)
}

fn mirroring(cluster: &MirrorLab, prim: &str) -> bool {
    cluster.wait_mirroring(prim, SETTLE).is_ok()
}

/// With a witness and replicated data, a primary cut off from its peer
/// (not from the witness) writes alone only once the witness has recorded
/// the peer's copy as outdated. The peer then never takes over — even
/// after the primary crashed — until the primary has come back and
/// resynchronised it: no write acknowledged alone is ever lost.
#[test]
fn with_a_witness_a_copy_that_missed_writes_alone_never_takes_over() {
    let (mut cluster, prim, second) = replicated_pair(Some(Duration::from_secs(2)));
    cluster.lab.partition(prim, second).expect("partition");
    let fenced = holdfast_lab::wait_until(SETTLE, Duration::from_millis(50), || {
        cluster
            .module_log(prim)
            .contains("the witness refuses the secondary the primary role")
            && holdfast_lab::cluster::replicating(&cluster.state(prim), "tracking")
    });
    assert!(
        fenced,
        "the primary goes on alone once the peer is fenced; log:\n{}",
        cluster.module_log(prim)
    );
    let out = cluster
        .sh(prim, &format!("echo alone > {DATA}/written-alone"))
        .expect("sh");
    assert!(out.status.success(), "a write acknowledged alone: {out:?}");

    // The primary crashes; its lease runs out, and the peer is refused.
    cluster.kill(prim).expect("kill the primary");
    let refused = holdfast_lab::wait_until(SETTLE, Duration::from_millis(50), || {
        cluster
            .module_log(second)
            .contains("this node's copy of the replicated data is outdated")
    });
    assert!(
        refused,
        "the witness refuses the outdated copy; log:\n{}",
        cluster.module_log(second)
    );
    let state = cluster.state(second);
    assert!(
        !runs_app(&cluster, second) && !settled(&state, "ALONE") && !settled(&state, "PRIM"),
        "the outdated copy does not take over: {state:?}"
    );

    // The primary returns and resynchronises its peer, which then has the
    // write and may take over.
    cluster.lab.heal(prim, second).expect("heal");
    cluster.start_daemon(prim).expect("restart the daemon");
    let _ = cluster.cli(prim, &["start", "-m", "demo"]);
    let (back, _) = cluster.wait_pair(SETTLE).expect("a pair again");
    assert_eq!(back, prim, "the node with the newest data is primary");
    assert!(mirroring(&cluster, prim), "the peer is resynchronised");
    let copy = cluster.host_path(second, DATA).expect("host dir");
    assert!(
        copy.join("written-alone").exists(),
        "the write reached the peer"
    );
    cluster.kill(prim).expect("kill the primary again");
    cluster
        .wait_states(SETTLE, |a, b| {
            let (_, s) = ordered(prim, a, b);
            settled(s, "ALONE") && s.as_ref().is_some_and(|s| s.app_active)
        })
        .expect("the resynchronised peer takes over");
}

/// A primary cut off from its peer and from the witness, while an
/// application appends records, each made durable by fdatasync: its
/// fdatasync waits for a fence it cannot get, it steps down, and they
/// fail. The node that takes over has every record the
/// application saw made durable; at heal the old primary's copy (which
/// applied the refused ones) is brought back to the new primary's.
#[test]
fn with_a_witness_every_write_an_isolated_primary_acknowledged_is_on_the_node_taking_over() {
    // The keep rule stops the application when the lease outlasts the stop
    // budget (three quarters of the lease in the lab) no more: 2 s after
    // the lease's start here, 1 s after the heartbeat timeout, so that the
    // primary loses its peer, and holds its writes, before it steps down.
    let (cluster, prim, second) = replicated_pair(Some(Duration::from_secs(8)));
    // One descriptor on the mount: once it is gone, writes fail rather
    // than reach the directory underneath (sync opens the same file
    // through /proc, so it fails too).
    let mut writer = sh_command(
        &cluster,
        prim,
        &format!("exec 3>>{DATA}/log; i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); echo line$i >&3 && sync -d /proc/self/fd/3 && echo $i; done"),
    )
    .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("writer");
    let log_on = |host: &str| {
        std::fs::read_to_string(cluster.host_path(host, DATA).expect("dir").join("log"))
            .unwrap_or_default()
    };
    let writing = holdfast_lab::wait_until(SETTLE, Duration::from_millis(20), || {
        log_on(second).lines().count() >= 100
    });
    assert!(writing, "records reach the secondary");
    for peer in [second, CLIENT] {
        cluster.lab.partition(prim, peer).expect("partition");
    }
    let took_over = stepped_down(&cluster, prim);
    let _ = writer.kill();
    took_over.expect("the isolated primary steps down, the other takes over");
    let output = writer.wait_with_output().expect("writer output");
    let acknowledged: Vec<u64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let kept = cluster.sh(second, &format!("cat {DATA}/log")).expect("sh");
    let kept: std::collections::HashSet<String> = String::from_utf8_lossy(&kept.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let lost: Vec<u64> = acknowledged
        .iter()
        .copied()
        .filter(|i| !kept.contains(&format!("line{i}")))
        .collect();
    eprintln!(
        "{} records acknowledged, {} on the node that took over",
        acknowledged.len(),
        kept.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost, from {:?}; the old primary's log:\n{}",
        lost.len(),
        lost.first(),
        cluster.module_log(prim)
    );
    // Held for a fence it cannot get, never acknowledged: refused when
    // the primary role ended.
    let log = cluster.module_log(prim);
    assert!(
        log.contains("the witness records the secondary's copy as outdated")
            && log.contains("changes the secondary lacks were refused"),
        "the isolated primary held its writes for the fence, then refused them; log:\n{log}"
    );

    for peer in [second, CLIENT] {
        cluster.lab.heal(prim, peer).expect("heal");
    }
    let (kept_prim, _) = cluster.wait_pair(SETTLE).expect("a pair again");
    assert_eq!(kept_prim, second);
    assert!(
        mirroring(&cluster, second),
        "the old primary is resynchronised"
    );
    assert_eq!(
        log_on(prim),
        log_on(second),
        "the old primary's copy is the new primary's"
    );
}

/// A module installed again while its daemon runs numbers its lease
/// requests afresh; the witness, which takes only requests newer than the
/// last of each module and node, must still take them: the module gets
/// its lease and the pair settles, with no request rejected.
#[test]
fn a_module_installed_again_still_gets_its_lease() {
    let (cluster, _, _) = common::started(MirrorOptions {
        pulse: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        witness_lease: Some(Duration::from_secs(2)),
        ..MirrorOptions::default()
    });
    let module = cluster.options.module.clone();
    let file = format!("/etc/holdfast/{module}/module.toml");
    for host in ["node1", "node2"] {
        cluster
            .run_cli_checked(host, &["stop", "-m", &module])
            .expect("stop");
    }
    let stopped = cluster.wait_states(SETTLE, |a, b| settled(a, "STOP") && settled(b, "STOP"));
    assert!(stopped.is_ok(), "both stop: {:?}", cluster.states());
    for host in ["node1", "node2"] {
        cluster
            .run_cli_checked(host, &["module", "install", &file])
            .expect("install again");
    }
    cluster.start_module().expect("start");
    let pair = cluster.wait_pair(SETTLE);
    let witness_log = cluster.lab.host_dir(CLIENT).unwrap().join("witness.log");
    let witness_log = std::fs::read_to_string(witness_log).unwrap_or_default();
    assert!(
        pair.is_ok(),
        "a pair again: {:?}\n{witness_log}",
        cluster.states()
    );
    assert!(
        !witness_log.contains("refused lease request"),
        "the witness took every request:\n{witness_log}"
    );
}
