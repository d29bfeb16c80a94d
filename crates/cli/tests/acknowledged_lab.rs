//! No acknowledged write is lost (invariant 1), over many trials on real
//! test hosts: writers append records with fsync on the primary and print
//! each acknowledged one; the primary is lost at a random moment — `kill -9`
//! of the whole host (daemon and writers), or its link cut — and every
//! record acknowledged before the loss must be on the new primary. Then the
//! old primary returns as SECOND, is resynchronised, and the next trial
//! runs the other way round. Trials alternate 1 and 8 writers. A cut-off
//! primary goes on ALONE (no witness: a split brain) until it is killed;
//! when it returns, the new primary refuses to merge and the test, as the
//! administrator, discards the old primary's copy (`second --discard-data`).
//!
//! `HOLDFAST_ACK_TRIALS` sets the number of trials per fault (default 20);
//! each run prints its seed, `HOLDFAST_ACK_SEED` replays one.

mod common;

use std::time::{Duration, Instant};

use common::{env_number, mirroring, ordered, replicated, started, DATA, SETTLE};
use holdfast_lab::cluster::{replicating, settled, MirrorLab, MirrorOptions};
use holdfast_lab::records::{Appenders, Records};
use holdfast_lab::wait_until;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
/// Bytes per record (the appender's `--size`).
const SIZE: u64 = 64;

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    LinkCut,
}

fn options() -> MirrorOptions {
    MirrorOptions {
        pulse: Duration::from_millis(100),
        timeout: Duration::from_millis(1000),
        tail: replicated(4900),
        ..MirrorOptions::default()
    }
}

fn start_writers(cluster: &MirrorLab, host: &str, writers: usize) -> Appenders {
    Appenders::start(cluster, host, DATA, writers, SIZE).expect("writers start")
}

/// The acknowledged records missing from `host`'s real directory.
fn missing(cluster: &MirrorLab, host: &str, records: &Records) -> Vec<String> {
    records.missing(cluster, host).expect("host dir")
}

/// After a link cut the cut-off primary usually changed its copy too (it
/// went on ALONE): the new primary then refuses to resynchronise and names
/// the commands, and the administrator keeps the new primary's copy. (If
/// it was killed before it recorded anything of its own, it is simply
/// resynchronised.)
fn settle_split_brain(cluster: &MirrorLab, old: &str, new: &str) {
    let mut refused = false;
    let settled_one_way = wait_until(SETTLE, Duration::from_millis(50), || {
        refused = cluster.replication_problem(new, &["split brain", "--discard-data"]);
        refused || replicating(&cluster.state(new), "mirroring")
    });
    assert!(
        settled_one_way,
        "{new} either mirrors or refuses to merge the split brain; log:\n{}",
        cluster.module_log(new)
    );
    if !refused {
        return;
    }
    cluster
        .run_cli_checked(old, &["stop", "-m", "demo"])
        .expect("stop");
    cluster
        .wait_states(SETTLE, |a, b| settled(ordered(old, a, b).0, "STOP"))
        .expect("stopped");
    cluster
        .run_cli_checked(old, &["second", "-m", "demo", "--discard-data"])
        .expect("second --discard-data");
}

fn trials(fault: Fault) {
    let count = env_number("HOLDFAST_ACK_TRIALS").unwrap_or(20);
    let seed = env_number("HOLDFAST_ACK_SEED").unwrap_or_else(rand::random);
    eprintln!("{fault:?}: {count} trials, seed {seed} (replay with HOLDFAST_ACK_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut cluster, mut prim, mut second) = started(options());
    let mut checked = 0;
    for trial in 0..count {
        mirroring(&cluster, prim);
        let writers = if trial % 2 == 0 { 1 } else { 8 };
        let running = start_writers(&cluster, prim, writers);
        assert!(
            wait_until(SETTLE, Duration::from_millis(5), || running.count() > 0),
            "trial {trial}: the writers on {prim} make progress"
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..600)));
        let lost_at = Instant::now();
        let required = match fault {
            Fault::Kill => {
                cluster.kill(prim).expect("kill -9 the primary host");
                running.acknowledged(None)
            }
            Fault::LinkCut => {
                cluster.lab.link_down(prim, 0).expect("link down");
                // Without a witness both sides go on ALONE (a split brain):
                // the cut-off primary's writers keep writing there. Only
                // what was acknowledged before the cut must survive.
                let both_alone = cluster.wait_states(SETTLE, |a, b| {
                    settled(ordered(prim, a, b).0, "ALONE")
                        && settled(ordered(second, a, b).0, "ALONE")
                });
                if let Err(e) = both_alone {
                    panic!(
                        "trial {trial}: {e}\n{prim} log:\n{}",
                        cluster.module_log(prim)
                    );
                }
                cluster.kill(prim).expect("kill -9 the cut-off primary");
                running.acknowledged(Some(lost_at))
            }
        };
        let took_over =
            cluster.wait_states(SETTLE, |a, b| settled(ordered(second, a, b).0, "ALONE"));
        if let Err(e) = took_over {
            panic!(
                "trial {trial}: {e}\n{second} log:\n{}",
                cluster.module_log(second)
            );
        }
        let lost = missing(&cluster, second, &required);
        assert!(
            lost.is_empty(),
            "trial {trial} ({fault:?}, {writers} writers, seed {seed}): {} of {} acknowledged records missing on the new primary {second}, e.g. {:?}",
            lost.len(),
            required.len(),
            &lost[..lost.len().min(5)]
        );
        checked += required.len();
        eprintln!(
            "trial {trial}: {fault:?} with {writers} writer(s): {} acknowledged records on {second}",
            required.len()
        );
        if let Fault::LinkCut = fault {
            cluster.lab.link_up(prim, 0).expect("link up");
        }
        cluster
            .start_daemon(prim)
            .expect("the old primary restarts");
        if let Fault::LinkCut = fault {
            settle_split_brain(&cluster, prim, second);
        }
        (prim, second) = (second, prim);
    }
    mirroring(&cluster, prim);
    eprintln!("{fault:?}: {count} trials, {checked} acknowledged records checked");
}

#[test]
fn acknowledged_records_survive_kill_9_of_the_primary() {
    trials(Fault::Kill);
}

#[test]
fn acknowledged_records_survive_a_link_cut_of_the_primary() {
    trials(Fault::LinkCut);
}
