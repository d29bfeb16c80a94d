//! A primary killed (`kill -9` of its host) while mirroring comes back and
//! is resynchronised by its activity log, on real test hosts: the new
//! primary sends what it tracked alone plus the regions the old one logged
//! as possibly changed and unacknowledged — the files being appended to —,
//! not a comparison of the whole tree. Every acknowledged record survives
//! and both trees end identical.
//!
//! `HOLDFAST_ACTIVITY_TRIALS` sets the number of crashes (default 2, one
//! each way); each run prints its seed, `HOLDFAST_ACTIVITY_SEED` replays
//! one (the moment of the kill).

mod common;

use std::time::Duration;

use common::{
    env_number, identical, lab, logs, mirroring, replicated, sh, sh_command, DATA, SETTLE,
};
use holdfast_lab::cluster::{settled, LastResync, MirrorLab, MirrorOptions};
use holdfast_lab::records::{Appenders, Records};
use holdfast_lab::wait_until;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
/// The tree both copies hold before the writers start, never written
/// while mirroring: 32 files of 512 KiB.
const BULK_FILES: u64 = 32;
const BULK_KIB: u64 = 512;
const BULK: u64 = BULK_FILES * BULK_KIB * 1024;
/// Bytes per record.
const SIZE: u64 = 64;
const WRITERS: usize = 4;

fn options() -> MirrorOptions {
    MirrorOptions {
        pulse: Duration::from_millis(100),
        timeout: Duration::from_millis(1000),
        tail: replicated(4940),
        ..MirrorOptions::default()
    }
}

/// Writers appending records with fsync in `dir` on `host`, once they
/// made progress.
fn writers(cluster: &MirrorLab, host: &str, dir: &str) -> Appenders {
    sh(cluster, host, &format!("mkdir -p {dir}"));
    let running = Appenders::start(cluster, host, dir, WRITERS, SIZE).expect("writers start");
    let progress = wait_until(SETTLE, Duration::from_millis(5), || running.count() > 20);
    assert!(progress, "the writers on {host} make progress");
    running
}

fn missing(cluster: &MirrorLab, host: &str, records: &Records) -> usize {
    records.missing(cluster, host).expect("host dir").len()
}

/// node1 started alone, `alone` run there, then node2 started.
fn pair(alone: &str) -> MirrorLab {
    let cluster = lab(options());
    cluster
        .run_cli_checked("node1", &["start", "-m", "demo"])
        .expect("start node1");
    let settled_alone = cluster.wait_states(SETTLE, |a, _| settled(a, "ALONE"));
    if let Err(e) = settled_alone {
        panic!("{e}\n{}", logs(&cluster));
    }
    sh(&cluster, "node1", alone);
    cluster
        .run_cli_checked("node2", &["start", "-m", "demo"])
        .expect("start node2");
    cluster
}

#[test]
fn a_primary_killed_while_mirroring_is_resynchronised_by_its_activity_log() {
    let trials = env_number("HOLDFAST_ACTIVITY_TRIALS").unwrap_or(2);
    let seed = env_number("HOLDFAST_ACTIVITY_SEED").unwrap_or_else(rand::random);
    eprintln!("{trials} trials, seed {seed} (replay with HOLDFAST_ACTIVITY_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    // The bulk of the tree is written while node1 is alone: tracked, then
    // sent to node2 when it joins; no activity log ever names it.
    let mut cluster = pair(&format!(
        "mkdir -p {DATA}/bulk && for i in $(seq 1 {BULK_FILES}); do \
         head -c {BULK_KIB}K /dev/urandom > {DATA}/bulk/f$i; done"
    ));
    let (mut prim, mut second) = ("node1", "node2");
    // Records written by the last writers while mirroring: their regions
    // are hot in the activity log of the next primary to be killed.
    let mut hot_records = 0;
    mirroring(&cluster, prim);
    identical(&cluster);
    for trial in 0..trials {
        let running = writers(&cluster, prim, &format!("{DATA}/t{trial}"));
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..800)));
        cluster.kill(prim).expect("kill -9 the primary host");
        let before = running.acknowledged(None);
        let took_over = cluster.wait_states(SETTLE, |a, b| {
            settled(if second == "node1" { a } else { b }, "ALONE")
        });
        if let Err(e) = took_over {
            panic!("trial {trial}: {e}\n{}", logs(&cluster));
        }
        assert_eq!(
            missing(&cluster, second, &before),
            0,
            "trial {trial}: acknowledged records missing on the new primary {second}"
        );
        // The new primary keeps writing, during the return too.
        let running = writers(&cluster, second, &format!("{DATA}/a{trial}"));
        cluster
            .start_daemon(prim)
            .expect("the old primary restarts");
        mirroring(&cluster, second);
        let after = running.acknowledged(None);
        identical(&cluster);
        let Some(LastResync {
            basis: how,
            bytes_sent: sent,
            blocks_compared: compared,
            ..
        }) = cluster.last_resync(second)
        else {
            panic!(
                "trial {trial}: no resynchronisation reported\n{}",
                logs(&cluster)
            );
        };
        eprintln!(
            "trial {trial}: {} records acknowledged before the kill, {} after; resync ({how}): {sent} B sent, {compared} blocks compared",
            before.len(),
            after.len()
        );
        assert!(
            how.starts_with("tracked changes and the secondary's activity log: "),
            "trial {trial}: resynchronised by the activity log, not {how:?}\n{}",
            logs(&cluster)
        );
        let regions: u64 = how
            .rsplit(": ")
            .next()
            .and_then(|r| r.split(' ').next()?.parse().ok())
            .unwrap_or(0);
        assert!(regions >= 1, "{how}");
        // What was compared: the files appended to while mirroring (their
        // logged extents, up to their ends); what travelled: the records
        // written after the kill and those in flight at it — both far less
        // than the tree.
        let records = (hot_records + before.len() + after.len() + 4 * WRITERS) as u64 * SIZE;
        let bound = 2 * records + (64 << 10);
        assert!(
            sent <= bound && sent < BULK / 4,
            "trial {trial}: sent {sent} B, at most {bound} B (tree {BULK} B)\n{}",
            logs(&cluster)
        );
        assert!(
            compared >= 1 && compared * 4096 <= bound && compared * 4096 < BULK / 4,
            "trial {trial}: {compared} blocks compared, at most {bound} B (tree {BULK} B)\n{}",
            logs(&cluster)
        );
        for host in [prim, second] {
            for records in [&before, &after] {
                assert_eq!(
                    missing(&cluster, host, records),
                    0,
                    "trial {trial}: acknowledged records of {} missing on {host}",
                    records.dir
                );
            }
        }
        hot_records = after.len();
        (prim, second) = (second, prim);
    }
}

/// Both hosts killed at once while mirroring (a power cut of the pair),
/// with changes in flight that the secondary never received; the old
/// primary back first: it is primary again and sends the secondary its
/// tracked changes *and* the regions of its own activity log. Every
/// acknowledged record ends on both, the trees identical.
#[test]
fn a_primary_back_first_after_the_pair_was_killed_sends_its_activity_log_regions() {
    let mut cluster = pair("true");
    mirroring(&cluster, "node1");
    let running = writers(&cluster, "node1", &format!("{DATA}/w"));
    std::thread::sleep(Duration::from_millis(300));
    // Changes in flight the secondary never gets: the primary's link is
    // cut, its writers' next records applied there and waiting, then
    // both hosts go — before anyone's heartbeat timeout.
    cluster.lab.link_down("node1", 0).expect("link down");
    // At least one: a file created there (applied, never acknowledged).
    let late = format!("echo late > {DATA}/w/late");
    let mut late = sh_command(&cluster, "node1", &late).spawn().expect("sh");
    std::thread::sleep(Duration::from_millis(200));
    cluster.kill("node1").expect("kill -9 the primary host");
    cluster.kill("node2").expect("kill -9 the secondary host");
    let _ = late.wait();
    cluster.lab.link_up("node1", 0).expect("link up");
    let acknowledged = running.acknowledged(None);
    cluster.start_daemon("node1").expect("node1 restarts");
    let alone = cluster.wait_states(SETTLE, |a, _| settled(a, "ALONE"));
    if let Err(e) = alone {
        panic!("{e}\n{}", logs(&cluster));
    }
    cluster.start_daemon("node2").expect("node2 restarts");
    mirroring(&cluster, "node1");
    identical(&cluster);
    let resync = cluster.last_resync("node1").expect("a resynchronisation");
    eprintln!(
        "{} records acknowledged; resync: {resync:?}",
        acknowledged.len()
    );
    assert_eq!(resync.basis, "tracked changes", "{}", logs(&cluster));
    for host in ["node1", "node2"] {
        assert_eq!(
            missing(&cluster, host, &acknowledged),
            0,
            "acknowledged records missing on {host}"
        );
    }
}
