//! Nothing durable is lost, the rest is a prefix (invariant 1), over many
//! trials on real test hosts: writers on the primary append records with
//! fsync, append the same records to a stream they never sync, and write
//! whole files closed without fsync, printing what each call returned;
//! the primary is lost at a random moment — `kill -9` of the whole host
//! (daemon and writers), or its link cut — and on the new primary every
//! record made durable by fsync and every file closed before the loss
//! must be there, and every records file, stream and whole file must be a
//! prefix of what was written. With `durability = "every_call"` every
//! streamed record must be there too. Then the old primary returns as
//! SECOND, is resynchronised, and the next trial runs the other way round.
//! Trials alternate 1 and 8 writers. A cut-off primary goes on ALONE (no
//! witness: a split brain) until it is killed; when it returns, the new
//! primary refuses to merge and the test, as the administrator, discards
//! the old primary's copy (`second --discard-data`).
//!
//! `HOLDFAST_ACK_TRIALS` sets the number of trials per fault (default 20;
//! the strict setting's test runs half as many of each); each run prints
//! its seed, `HOLDFAST_ACK_SEED` replays one.

mod common;

use std::time::{Duration, Instant};

use common::{env_number, mirroring, ordered, replicated, started, DATA, SETTLE};
use holdfast_lab::cluster::{replicating, settled, MirrorLab, MirrorOptions};
use holdfast_lab::records::{Appenders, Records, Workload};
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

/// Which calls wait for the secondary (`replication.durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    SyncCalls,
    EveryCall,
}

fn options(durability: Durability) -> MirrorOptions {
    let setting = match durability {
        Durability::SyncCalls => "sync_calls",
        Durability::EveryCall => "every_call",
    };
    MirrorOptions {
        pulse: Duration::from_millis(100),
        timeout: Duration::from_millis(1000),
        tail: replicated(4900).replace(
            "[replication]\n",
            &format!("[replication]\ndurability = \"{setting}\"\n"),
        ),
        ..MirrorOptions::default()
    }
}

fn start_writers(cluster: &MirrorLab, host: &str, writers: usize) -> Appenders {
    Appenders::start_workload(cluster, host, DATA, writers, SIZE, Workload::Mixed)
        .expect("writers start")
}

/// What `host`'s real directory lacks of what was durable (with
/// `every_call`, of everything written), and what in it is not a prefix
/// of what was written.
fn problems(
    cluster: &MirrorLab,
    host: &str,
    records: &Records,
    durability: Durability,
) -> Vec<String> {
    let mut problems = match durability {
        Durability::SyncCalls => records.missing(cluster, host),
        Durability::EveryCall => records.missing_written(cluster, host),
    }
    .expect("host dir");
    let wrong = records.not_prefixes(cluster, host).expect("host dir");
    problems.extend(wrong.into_iter().map(|f| format!("{f} is not a prefix")));
    problems
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

fn trials(faults: &[Fault], count: u64, durability: Durability) {
    let seed = env_number("HOLDFAST_ACK_SEED").unwrap_or_else(rand::random);
    eprintln!(
        "{faults:?} ({durability:?}): {count} trials, seed {seed} (replay with HOLDFAST_ACK_SEED={seed})"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut cluster, mut prim, mut second) = started(options(durability));
    let mut checked = (0, 0, 0);
    for trial in 0..count {
        // Each fault with 1 and with 8 writers in turn.
        let fault = faults[(trial / 2) as usize % faults.len()];
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
        let wrong = problems(&cluster, second, &required, durability);
        assert!(
            wrong.is_empty(),
            "trial {trial} ({fault:?}, {durability:?}, {writers} writers, seed {seed}): {} problems on the new primary {second} ({} synced records, {} closed files, {} streamed records said written), e.g. {:?}",
            wrong.len(),
            required.len(),
            required.closed.len(),
            required.streamed.len(),
            &wrong[..wrong.len().min(5)]
        );
        checked.0 += required.len();
        checked.1 += required.closed.len();
        checked.2 += required.streamed.len();
        eprintln!(
            "trial {trial}: {fault:?} with {writers} writer(s): {} synced records, {} closed files on {second}; {} streamed records, prefixes checked",
            required.len(),
            required.closed.len(),
            required.streamed.len(),
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
    eprintln!(
        "{faults:?} ({durability:?}): {count} trials, {} synced records, {} closed files, {} streamed records checked",
        checked.0, checked.1, checked.2
    );
}

fn count() -> u64 {
    env_number("HOLDFAST_ACK_TRIALS").unwrap_or(20)
}

#[test]
fn durable_writes_survive_kill_9_of_the_primary_and_the_rest_is_a_prefix() {
    trials(&[Fault::Kill], count(), Durability::SyncCalls);
}

#[test]
fn durable_writes_survive_a_link_cut_of_the_primary_and_the_rest_is_a_prefix() {
    trials(&[Fault::LinkCut], count(), Durability::SyncCalls);
}

/// The strict setting: every call waits, so every write is durable.
#[test]
fn with_every_call_waiting_no_write_is_lost() {
    trials(
        &[Fault::Kill, Fault::LinkCut],
        count().div_ceil(2) * 2,
        Durability::EveryCall,
    );
}
