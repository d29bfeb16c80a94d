//! What a returning secondary is sent, on real test hosts (acknowledgement
//! on receipt, the default): after its module was stopped and started, or
//! its daemon killed amid writes (changes acknowledged on receipt, maybe
//! not applied), only the changes the primary knows it may lack; checksums
//! are compared only when its host restarted since it applied changes it
//! had not synced (simulated by rewriting the boot id it recorded).

mod common;

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{identical, lab, logs, replicated, sh, sh_command, DATA, SETTLE};
use holdfast_lab::cluster::{settled, MirrorLab, MirrorOptions, TrackedState};
use holdfast_lab::records::Appenders;
use holdfast_lab::wait_until;
const PRIM: &str = "node1";
const SECOND: &str = "node2";
const MIB: u64 = 1 << 20;
/// The tree both copies hold before the secondary leaves: 16 files of 4 MiB.
const FILES: u64 = 16;
const FILE_BLOCKS: u64 = 1024;
/// Size of an appended record.
const RECORD: u64 = 512;

fn options() -> MirrorOptions {
    MirrorOptions {
        module_extra: format!("default_primary = \"{PRIM}\""),
        tail: replicated(4920),
        ..MirrorOptions::default()
    }
}

fn mirroring(cluster: &MirrorLab) {
    common::mirroring(cluster, PRIM);
}

/// A mirroring pair whose copies hold the same 64 MiB.
fn pair() -> MirrorLab {
    let cluster = lab(options());
    cluster.start_module().expect("start");
    mirroring(&cluster);
    sh(
        &cluster,
        PRIM,
        &format!(
            "for i in $(seq 0 {}); do head -c {}M /dev/urandom > {DATA}/f$i; done; sync",
            FILES - 1,
            FILE_BLOCKS * 4096 / MIB
        ),
    );
    identical(&cluster);
    cluster
}

/// `writers` applications on the primary, each rewriting `count` 4 KiB
/// blocks of the tree; each prints a line per write that succeeded.
fn writers(cluster: &MirrorLab, writers: u32, count: u32) -> std::process::Child {
    let one = format!(
        "i=0; while [ $i -lt {count} ]; do i=$((i+1)); \
         dd if=/dev/urandom of={DATA}/f$(( (i + $w) % {FILES} )) bs=4096 count=1 \
         seek=$(( (i * 7919 + $w * 104729) % {FILE_BLOCKS} )) conv=notrunc status=none && echo $w $i; done"
    );
    sh_command(
        cluster,
        PRIM,
        &format!("for w in $(seq 1 {writers}); do ( {one} ) & done; wait"),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("writers")
}

/// How many writes succeeded; the writers must have finished by `SETTLE`.
fn succeeded(mut writers: std::process::Child) -> u64 {
    let ended = wait_until(SETTLE, Duration::from_millis(50), || {
        matches!(writers.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = writers.kill();
    }
    let out = writers.wait_with_output().expect("writers' output");
    assert!(ended, "the writers finish");
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

/// The secondary's generation record (in its /var/lib/holdfast).
fn record_path(cluster: &MirrorLab) -> std::path::PathBuf {
    cluster
        .lab
        .host_dir(SECOND)
        .unwrap()
        .join("var-lib-holdfast/modules/demo/replication/0/generations")
}

fn record(cluster: &MirrorLab) -> serde_json::Value {
    let text = std::fs::read_to_string(record_path(cluster)).expect("the secondary's record");
    serde_json::from_str(&text).expect("JSON")
}

/// A write of 1 MiB while the primary is alone (what must travel at least).
fn write_alone(cluster: &MirrorLab) {
    let alone = cluster.wait_states(SETTLE, |a, _| settled(a, "ALONE"));
    if let Err(e) = alone {
        panic!("{e}\n{}", logs(cluster));
    }
    sh(
        cluster,
        PRIM,
        &format!(
            "dd if=/dev/urandom of={DATA}/f3 bs=1M count=1 seek=1 conv=notrunc,fsync status=none"
        ),
    );
}

/// The last resynchronisation the primary reports in its state: how it
/// went about it and the bytes it sent. It is the return just waited for
/// (it ended moments ago), and took some time.
fn last_resync(cluster: &MirrorLab) -> (String, u64) {
    let resync = cluster
        .last_resync(PRIM)
        .unwrap_or_else(|| panic!("the primary reports its last resync\n{}", logs(cluster)));
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    assert!(
        resync.seconds > 0.0
            && now_ms.saturating_sub(resync.ended_at_ms) < 2 * SETTLE.as_millis() as u64,
        "{resync:?} at {now_ms}"
    );
    (resync.basis, resync.bytes_sent)
}

/// The secondary came back: mirroring, identical, and what was sent.
fn returned(cluster: &MirrorLab) -> (String, u64) {
    mirroring(cluster);
    identical(cluster);
    let resync = last_resync(cluster);
    eprintln!("resynchronisation: {resync:?}");
    resync
}

/// The 1 MiB written alone, and at most every 4 KiB block written around
/// the departure (acknowledged or in flight), not the 64 MiB.
fn most(written: u64) -> u64 {
    MIB + (written + 64) * 4096
}

/// What the primary's `holdfast state` says it will send the secondary,
/// once it tracks (SafeKit's `rfsdiff`); its text line says the same.
fn tracked_alone(cluster: &MirrorLab) -> TrackedState {
    let mut tracked = None;
    let seen = wait_until(SETTLE, Duration::from_millis(50), || {
        tracked = cluster.state(PRIM).and_then(|s| {
            let dir = s.replication.first()?;
            (dir.activity == "tracking").then(|| dir.tracked.clone())?
        });
        tracked.is_some()
    });
    assert!(seen, "tracked changes in the state\n{}", logs(cluster));
    let tracked = tracked.expect("seen");
    eprintln!("announced while alone: {tracked:?}");
    assert!(!tracked.everything, "{tracked:?}");
    assert!((1..=FILES).contains(&tracked.files), "{tracked:?}");
    let text = cluster
        .run_cli_checked(PRIM, &["state", "-m", "demo"])
        .expect("state");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(": {} file", tracked.files))
            && text.contains(" since the secondary left"),
        "{text}"
    );
    tracked
}

fn assert_tracked(cluster: &MirrorLab, how: &str, sent: u64, written: u64) {
    assert_eq!(how, "tracked changes", "{}", logs(cluster));
    let most = most(written);
    assert!(
        (MIB..=most).contains(&sent),
        "sent {sent} B: between {MIB} and {most}\n{}",
        logs(cluster)
    );
}

#[test]
fn a_secondary_whose_module_stopped_and_started_gets_only_the_tracked_changes() {
    let cluster = pair();
    let writing = writers(&cluster, 2, 200);
    std::thread::sleep(Duration::from_millis(300));
    cluster
        .run_cli_checked(SECOND, &["stop", "-m", "demo"])
        .expect("stop the secondary's module");
    write_alone(&cluster);
    // A clean stop synced its copy: even a restart of its host now would
    // leave nothing to compare.
    let synced = wait_until(SETTLE, Duration::from_millis(50), || {
        record(&cluster)["unsynced"].is_null()
    });
    assert!(
        synced,
        "{}
{}",
        record(&cluster),
        logs(&cluster)
    );
    let written = succeeded(writing);
    let tracked = tracked_alone(&cluster);
    assert!(
        (MIB..=most(written)).contains(&tracked.bytes),
        "{tracked:?}\n{}",
        logs(&cluster)
    );
    cluster
        .run_cli_checked(SECOND, &["second", "-m", "demo"])
        .expect("start it again");
    let (how, sent) = returned(&cluster);
    assert_tracked(&cluster, &how, sent, written);
    // Nothing changed since: the resync sent what the state announced,
    // and logged it first.
    assert_eq!(sent, tracked.bytes, "{tracked:?}");
    let announced = format!("{DATA}: {} file", tracked.files);
    assert!(
        cluster.module_log(PRIM).contains(&announced),
        "{announced}\n{}",
        logs(&cluster)
    );
    let state = cluster.state(PRIM).expect("state");
    assert!(state.replication[0].tracked.is_none(), "{state:?}");
    // It leaves again: an estimate, at the rate just measured.
    cluster
        .run_cli_checked(SECOND, &["stop", "-m", "demo"])
        .expect("stop the secondary's module again");
    write_alone(&cluster);
    let again = tracked_alone(&cluster);
    assert!(again.eta_seconds.is_some_and(|s| s > 0.0), "{again:?}");
}

#[test]
fn a_lone_primary_killed_amid_changes_says_what_only_a_comparison_will_tell() {
    let mut cluster = pair();
    cluster
        .run_cli_checked(SECOND, &["stop", "-m", "demo"])
        .expect("stop the secondary's module");
    write_alone(&cluster);
    // Two changes in a row: if the first checkpoints the change log, the
    // second's directory mark is only in its activity log at the kill.
    sh(
        &cluster,
        PRIM,
        &format!("mkdir {DATA}/d && echo new > {DATA}/d/new"),
    );
    cluster.kill(PRIM).expect("kill -9 the primary's daemon");
    cluster.start_daemon(PRIM).expect("restart it");
    let tracked = tracked_alone(&cluster);
    assert!(tracked.directories >= 1, "{tracked:?}");
    let most = tracked.bytes + tracked.bytes_compared;
    assert!(most >= MIB, "the 1 MiB is still known: {tracked:?}");
    let text = cluster
        .run_cli_checked(PRIM, &["state", "-m", "demo"])
        .expect("state");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("unknown until compared"), "{text}");
    cluster
        .run_cli_checked(SECOND, &["second", "-m", "demo"])
        .expect("start it again");
    let (how, sent) = returned(&cluster);
    assert_eq!(how, "tracked changes", "{}", logs(&cluster));
    assert!((MIB..=most).contains(&sent), "sent {sent} B, {tracked:?}");
}

#[test]
fn a_secondary_killed_amid_writes_gets_only_the_tracked_changes() {
    let mut cluster = pair();
    let writing = writers(&cluster, 4, 300);
    // And 8 threads appending records with fsync: many changes in flight.
    let appending = Appenders::start(&cluster, PRIM, DATA, 8, RECORD).expect("appenders");
    std::thread::sleep(Duration::from_millis(500));
    cluster
        .kill(SECOND)
        .expect("kill -9 the secondary's daemon");
    write_alone(&cluster);
    let written = succeeded(writing);
    let records = appending.acknowledged(None).len() as u64;
    assert!(records > 100, "the appenders made progress: {records}");
    cluster.start_daemon(SECOND).expect("restart it");
    let (how, sent) = returned(&cluster);
    // Appended records fill blocks one after the other: their blocks,
    // plus one partly filled per writer (and one in flight each).
    let appended = (records + 8) * RECORD / 4096 + 2 * 8;
    assert_tracked(&cluster, &how, sent, written + appended);
}

#[test]
fn a_secondary_whose_host_restarted_is_compared_by_checksums() {
    let mut cluster = pair();
    cluster
        .kill(SECOND)
        .expect("kill -9 the secondary's daemon");
    // Its page cache "lost": the boot id it recorded is no longer the
    // running kernel's.
    let mut json = record(&cluster);
    assert!(
        json["unsynced"].is_string(),
        "it recorded applying unsynced changes: {json}"
    );
    json["unsynced"] = "00000000-0000-0000-0000-000000000000".into();
    std::fs::write(record_path(&cluster), json.to_string()).unwrap();
    write_alone(&cluster);
    cluster.start_daemon(SECOND).expect("restart it");
    let (how, sent) = returned(&cluster);
    assert!(
        how.starts_with("comparing checksums: the secondary's host restarted"),
        "{how}\n{}",
        logs(&cluster)
    );
    // Only what differs travels: the 1 MiB (in 64 KiB compared blocks).
    assert!(
        (MIB..=2 * MIB).contains(&sent),
        "sent {sent} B\n{}",
        logs(&cluster)
    );
}
