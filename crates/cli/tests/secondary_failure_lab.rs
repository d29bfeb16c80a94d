//! A secondary that fails while alive — its disk full, or too slow to
//! acknowledge (its replication traffic dropped) — on real test hosts:
//! neither copy is corrupted, the primary says so, and it either goes on
//! alone with tracking (`on_secondary_failure = "degrade"`) or holds the
//! writes until the secondary has them (`"block"`); once the secondary
//! recovers it is resynchronised and both trees are identical.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{checksums, lab, sh, sh_command, DATA, SETTLE};
use holdfast_lab::cluster::{MirrorLab, MirrorOptions};
use holdfast_lab::wait_until;
const PRIM: &str = "node1";
const SECOND: &str = "node2";

fn options(policy: &str) -> MirrorOptions {
    MirrorOptions {
        module_extra: format!("default_primary = \"{PRIM}\""),
        tail: format!(
            "\n[replication]\nport = 4900\nack_timeout = \"1s\"\non_secondary_failure = \"{policy}\"\n\n[[replicated]]\ndir = \"{DATA}\"\n"
        ),
        ..MirrorOptions::default()
    }
}

/// Where `SECOND`'s small file system is mounted (its copy is `data` in
/// it, bound at `DATA`; `filler` takes most of the room).
const DISK: &str = "/srv/small";

/// A pair with `SECOND`'s copy on an 8 MiB file system with 2 MiB free,
/// mirroring, a small file written.
fn pair_with_small_secondary(policy: &str) -> MirrorLab {
    let cluster = lab(options(policy));
    sh(
        &cluster,
        SECOND,
        &format!(
            "mkdir -p {DISK} {DATA} && mount -t tmpfs -o size=8m tmpfs {DISK} && mkdir {DISK}/data \
             && head -c 6M /dev/zero > {DISK}/filler && mount --bind {DISK}/data {DATA}"
        ),
    );
    cluster.start_module().expect("start");
    mirroring(&cluster);
    sh(
        &cluster,
        PRIM,
        &format!("echo small > {DATA}/small && sync"),
    );
    cluster
}

fn mirroring(cluster: &MirrorLab) {
    if let Err(e) = cluster.wait_mirroring(PRIM, SETTLE) {
        let mounts = cluster.sh(SECOND, "grep /srv /proc/mounts").unwrap();
        panic!(
            "{e}\n{PRIM} log:\n{}\n{SECOND} log:\n{}\n{SECOND} mounts:\n{}",
            cluster.module_log(PRIM),
            cluster.module_log(SECOND),
            String::from_utf8_lossy(&mounts.stdout)
        );
    }
}

fn wait_reported(cluster: &MirrorLab, what: &str) {
    assert!(
        wait_until(SETTLE, Duration::from_millis(50), || cluster
            .replication_problem(PRIM, &[what])),
        "the primary reports {what:?}; state {:?}\nlog:\n{}\n{SECOND} log:\n{}\ndaemon:\n{}",
        cluster.state(PRIM),
        cluster.module_log(PRIM),
        cluster.module_log(SECOND),
        std::fs::read_to_string(cluster.lab.host_dir(PRIM).unwrap().join("daemon.log"))
            .unwrap_or_default()
    );
}

/// Writes `MiB` random MiB to `DATA/big` on the primary (from a copy
/// kept outside, to compare with): the shell command, run in the background.
fn big_write(cluster: &MirrorLab, mib: u32) -> std::process::Child {
    sh(
        cluster,
        PRIM,
        &format!("head -c {mib}M /dev/urandom > /srv/big-source"),
    );
    // Acknowledged at the fsync (writes may be cached until then).
    sh_command(
        cluster,
        PRIM,
        &format!("dd if=/srv/big-source of={DATA}/big bs=1M conv=fsync status=none"),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Waits until `host`'s module log says `text`.
fn wait_logged(cluster: &MirrorLab, host: &str, text: &str) {
    assert!(
        wait_until(SETTLE, Duration::from_millis(50), || cluster
            .module_log(host)
            .contains(text)),
        "{host} logs {text:?}:\n{}",
        cluster.module_log(host)
    );
}

fn make_room(cluster: &MirrorLab) {
    sh(cluster, SECOND, &format!("rm -f {DISK}/filler"));
}

fn finished(child: &mut std::process::Child, within: Duration) -> bool {
    wait_until(within, Duration::from_millis(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    })
}

/// Gives the secondary room again, waits for mirroring, and checks both
/// trees are identical, the big file as written.
fn recover_and_compare(cluster: &MirrorLab) {
    make_room(cluster);
    mirroring(cluster);
    let source = sh(cluster, PRIM, "sha256sum < /srv/big-source");
    let written = sh(cluster, PRIM, &format!("sha256sum < {DATA}/big"));
    assert_eq!(
        source.stdout, written.stdout,
        "the primary's copy is intact"
    );
    let (p, s) = (checksums(cluster, PRIM), checksums(cluster, SECOND));
    assert!(p.contains("./small") && p.contains("./big"), "{p}");
    assert_eq!(p, s, "both copies identical after the resynchronisation");
}

#[test]
fn a_full_secondary_disk_degrades_the_primary_to_tracking_then_it_catches_up() {
    let cluster = pair_with_small_secondary("degrade");
    let mut writer = big_write(&cluster, 3);
    assert!(
        finished(&mut writer, SETTLE),
        "the write goes on without the secondary"
    );
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the application's write succeeded: {out:?}"
    );
    wait_reported(&cluster, "No space left on device");
    let log = cluster.module_log(PRIM);
    assert!(
        log.contains("tracking changes (on_secondary_failure = degrade)"),
        "{log}"
    );
    // The secondary knows its copy is behind.
    wait_logged(
        &cluster,
        SECOND,
        "not up to date until the primary resynchronises it",
    );
    // What it applied before the disk filled is intact.
    assert!(checksums(&cluster, SECOND).contains("./small"));
    recover_and_compare(&cluster);
}

#[test]
fn with_block_a_full_secondary_disk_holds_writes_until_it_has_room() {
    let cluster = pair_with_small_secondary("block");
    let mut writer = big_write(&cluster, 3);
    wait_reported(&cluster, "writes wait");
    assert!(
        !finished(&mut writer, Duration::from_secs(2)),
        "the write waits for the secondary; log:\n{}",
        cluster.module_log(PRIM)
    );
    assert_eq!(
        cluster.state(PRIM).map(|s| s.state),
        Some("PRIM".to_string()),
        "still PRIM: the secondary is alive"
    );
    make_room(&cluster);
    assert!(
        finished(&mut writer, SETTLE),
        "the held write completes once the secondary has room; log:\n{}",
        cluster.module_log(PRIM)
    );
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    recover_and_compare(&cluster);
}

/// Drops (or allows again) the replication traffic reaching `SECOND`:
/// a secondary that does not acknowledge, while its heartbeats go on.
fn drop_replication(cluster: &MirrorLab, drop: bool) {
    if drop {
        cluster.lab.drop_tcp(SECOND, 4900).expect("drop");
    } else {
        cluster.lab.allow_tcp(SECOND).expect("allow");
    }
}

/// A mirroring pair whose secondary then stops receiving replication.
fn unresponsive_secondary(policy: &str) -> MirrorLab {
    let cluster = lab(options(policy));
    cluster.start_module().expect("start");
    mirroring(&cluster);
    drop_replication(&cluster, true);
    cluster
}

#[test]
fn a_secondary_that_does_not_acknowledge_is_left_behind_after_ack_timeout() {
    let cluster = unresponsive_secondary("degrade");
    let started = std::time::Instant::now();
    sh(&cluster, PRIM, &format!("echo slow > {DATA}/slow && sync"));
    let took = started.elapsed();
    wait_reported(&cluster, "no acknowledgement within ack_timeout = 1s");
    wait_logged(
        &cluster,
        PRIM,
        "tracking changes (on_secondary_failure = degrade)",
    );
    // Held until the secondary is declared lost (ack_timeout), not failed.
    assert!(
        took >= Duration::from_secs(1) && took < SETTLE,
        "a write to an unresponsive secondary returned after {took:?}"
    );
    drop_replication(&cluster, false);
    mirroring(&cluster);
    assert!(
        wait_until(SETTLE, Duration::from_millis(50), || checksums(
            &cluster, SECOND
        )
        .contains("./slow")),
        "the secondary catches up"
    );
    assert_eq!(checksums(&cluster, PRIM), checksums(&cluster, SECOND));
}

#[test]
fn with_block_writes_wait_for_a_secondary_that_does_not_acknowledge() {
    let cluster = unresponsive_secondary("block");
    let mut writer = sh_command(
        &cluster,
        PRIM,
        &format!("echo held | dd of={DATA}/held conv=fsync status=none"),
    )
    .spawn()
    .unwrap();
    wait_reported(
        &cluster,
        "writes wait for it (on_secondary_failure = block)",
    );
    assert!(
        !finished(&mut writer, Duration::from_secs(1)),
        "the write waits for the acknowledgement"
    );
    assert_eq!(
        cluster.state(PRIM).map(|s| s.state),
        Some("PRIM".to_string())
    );
    drop_replication(&cluster, false);
    assert!(
        finished(&mut writer, SETTLE),
        "acknowledged once the secondary answers again; log:\n{}",
        cluster.module_log(PRIM)
    );
    assert!(writer.wait().unwrap().success());
    wait_logged(
        &cluster,
        PRIM,
        "acknowledges changes of /srv/demo/data again",
    );
    assert!(checksums(&cluster, SECOND).contains("./held"));
    assert_eq!(checksums(&cluster, PRIM), checksums(&cluster, SECOND));
}
