//! File replication of a mirror module on real test hosts: writes through
//! the primary's FUSE mount reach the secondary's real directory before
//! they return, no acknowledged write is lost when the primary is killed,
//! and a returning node is resynchronised until both trees are identical.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{lab, replicated, sh_command, started, DATA, SETTLE};
use holdfast_lab::cluster::{settled, MirrorLab, MirrorOptions};
use holdfast_lab::wait_until;

fn options() -> MirrorOptions {
    MirrorOptions {
        tail: replicated(4900),
        ..MirrorOptions::default()
    }
}

/// Every regular file under `dir`: relative path → content.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(base, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Runs `script` with `sh -c` on `host` (inside its namespaces).
fn sh(cluster: &MirrorLab, host: &str, script: &str) -> std::process::Output {
    cluster.sh(host, script).expect("sh runs")
}

/// `host`'s real directory, seen from outside.
fn real(cluster: &MirrorLab, host: &str) -> std::path::PathBuf {
    cluster.host_path(host, DATA).expect("host dir")
}

/// The mounts on the replicated directory on `host` (`/proc/mounts` lines).
fn mounts(cluster: &MirrorLab, host: &str) -> String {
    let out = sh(
        cluster,
        host,
        &format!("grep ' {DATA} ' /proc/mounts || true"),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the module on both nodes: stopping unmounts, no FUSE mount is
/// left on either.
fn stopped_without_mounts(cluster: &MirrorLab) {
    for host in ["node1", "node2"] {
        cluster
            .run_cli_checked(host, &["stop", "-m", "demo"])
            .expect("stop");
    }
    cluster
        .wait_states(SETTLE, |a, b| settled(a, "STOP") && settled(b, "STOP"))
        .expect("both stopped");
    for host in ["node1", "node2"] {
        let mounts = mounts(cluster, host);
        assert!(!mounts.contains(DATA), "{host} left a mount: {mounts}");
    }
}

/// An application on `host` appending `line1`..`line<count>` to the
/// replicated log, printing the number of each append that succeeded.
fn appender(cluster: &MirrorLab, host: &str, count: u32) -> std::process::Child {
    sh_command(
        cluster,
        host,
        &format!("i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo line$i >> {DATA}/log && echo $i; done"),
    )
    .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("writer")
}

/// The appends the application saw succeed (acknowledged writes).
fn acknowledged(writer: std::process::Child) -> Vec<u64> {
    let output = writer.wait_with_output().expect("writer output");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn writes_are_mirrored_and_survive_failover_and_the_old_primary_is_resynchronised() {
    let (mut cluster, prim, second) = started(options());
    assert!(
        mounts(&cluster, prim).contains("fuse"),
        "the primary mounts {DATA}"
    );
    let on_second = mounts(&cluster, second);
    assert!(
        !on_second.contains("fuse") && on_second.contains(" ro,"),
        "the secondary keeps {DATA} read-only, without FUSE: {on_second}"
    );
    // Local processes cannot change the secondary's copy.
    let out = sh(&cluster, second, &format!("echo local > {DATA}/local"));
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "a write on the secondary fails with EROFS: {out:?}"
    );

    // Steady state: a write through the primary's mount appears in the
    // secondary's real directory.
    let out = sh(
        &cluster,
        prim,
        &format!("mkdir -p {DATA}/sub && echo hello > {DATA}/sub/f && head -c 4194304 /dev/urandom > {DATA}/big && sync"),
    );
    assert!(out.status.success(), "write on the primary: {out:?}");
    let reached = wait_until(SETTLE, Duration::from_millis(50), || {
        std::fs::read(real(&cluster, second).join("sub/f")).ok() == Some(b"hello\n".to_vec())
    });
    assert!(
        reached,
        "the write reaches the secondary; primary log:\n{}",
        cluster.module_log(prim)
    );

    // Once mirroring, each acknowledged append is on the secondary when it
    // returns: a writer records every line it saw succeed, then the
    // primary host is killed in the middle.
    let writer = appender(&cluster, prim, 100000);
    std::thread::sleep(Duration::from_millis(1500));
    cluster.kill(prim).expect("kill -9 the primary host");
    let acked = acknowledged(writer).into_iter().max().unwrap_or(0);
    assert!(acked > 10, "the writer made progress ({acked} lines)");

    cluster
        .wait_states(SETTLE, |a, b| {
            let survivor = if second == "node1" { a } else { b };
            settled(survivor, "ALONE")
        })
        .expect("the survivor becomes ALONE");
    let survived = std::fs::read_to_string(real(&cluster, second).join("log")).expect("log file");
    let lines: Vec<&str> = survived.lines().collect();
    for i in 1..=acked {
        assert_eq!(
            lines.get(i as usize - 1).copied(),
            Some(format!("line{i}").as_str()),
            "acknowledged line {i} of {acked} is on the survivor"
        );
    }
    let on_survivor = mounts(&cluster, second);
    assert!(
        on_survivor.contains("fuse") && !on_survivor.contains(" ro,"),
        "the survivor mounts {DATA} with FUSE, writable: {on_survivor}"
    );

    // Changes while ALONE, then the old primary returns as SECOND and is
    // brought up to date.
    let out = sh(
        &cluster,
        second,
        &format!(
            "echo alone >> {DATA}/log && echo new > {DATA}/sub/g && rm -f {DATA}/sub/f && sync"
        ),
    );
    assert!(out.status.success(), "write on the survivor: {out:?}");
    cluster.start_daemon(prim).expect("restart the old primary");
    cluster
        .wait_states(SETTLE, |a, b| {
            let (old, survivor) = if prim == "node1" { (a, b) } else { (b, a) };
            settled(old, "SECOND") && settled(survivor, "PRIM")
        })
        .expect("the old primary comes back SECOND");
    // Its stale FUSE mount is gone; its copy is read-only again.
    let on_old = mounts(&cluster, prim);
    assert!(
        on_old.lines().count() == 1 && on_old.contains(" ro,") && !on_old.contains("fuse"),
        "the returning secondary has one read-only mount on {DATA}: {on_old}"
    );
    let same = wait_until(SETTLE, Duration::from_millis(100), || {
        tree(&real(&cluster, prim)) == tree(&real(&cluster, second))
    });
    assert!(
        same,
        "trees identical after resynchronisation; old primary {:?}, survivor {:?}\nsurvivor log:\n{}",
        tree(&real(&cluster, prim)).keys().collect::<Vec<_>>(),
        tree(&real(&cluster, second)).keys().collect::<Vec<_>>(),
        cluster.module_log(second)
    );
    // Only what changed was sent back: not the 4 MiB file both hold.
    let resyncs = |cluster: &MirrorLab| -> Vec<u64> {
        cluster
            .module_log(second)
            .lines()
            .filter_map(|l| l.split("resynchronised (").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .collect()
    };
    // Before the failover the survivor was SECOND: it logged none.
    assert!(
        wait_until(SETTLE, Duration::from_millis(50), || !resyncs(&cluster)
            .is_empty()),
        "the survivor logs the end of the resynchronisation"
    );
    let sent = resyncs(&cluster)[0];
    assert!(
        sent < 1 << 20,
        "the returning node received {sent} bytes, not only the changes"
    );

    // And mirroring again.
    let out = sh(
        &cluster,
        second,
        &format!("echo again > {DATA}/after && sync"),
    );
    assert!(out.status.success());
    let reached = wait_until(SETTLE, Duration::from_millis(50), || {
        std::fs::read(real(&cluster, prim).join("after")).ok() == Some(b"again\n".to_vec())
    });
    assert!(reached, "mirroring after reintegration");

    eprintln!("acknowledged lines: {acked}, resynchronisation sent {sent} bytes");

    // Stopping the module unmounts: no FUSE mount is left on either node.
    stopped_without_mounts(&cluster);
}

#[test]
fn the_primary_keeps_writing_without_its_secondary_which_catches_up_on_return() {
    let (mut cluster, prim, second) = started(options());
    let out = sh(&cluster, prim, &format!("echo first > {DATA}/a && sync"));
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(SETTLE, Duration::from_millis(50), || {
            std::fs::read(real(&cluster, second).join("a")).ok() == Some(b"first\n".to_vec())
        }),
        "mirrored before the loss"
    );

    // The secondary dies while the application writes: the primary goes
    // ALONE and goes on; a write may fail while the loss is noticed, but
    // every write that succeeded is kept.
    let writer = appender(&cluster, prim, 3000);
    std::thread::sleep(Duration::from_millis(500));
    cluster.kill(second).expect("kill -9 the secondary host");
    cluster
        .wait_states(SETTLE, |a, b| {
            let p = if prim == "node1" { a } else { b };
            settled(p, "ALONE")
        })
        .expect("the primary becomes ALONE");
    let acked = acknowledged(writer);
    assert!(
        acked.len() > 100,
        "the writer went on ({} lines)",
        acked.len()
    );
    eprintln!("{} of 3000 appends succeeded around the loss", acked.len());
    let out = sh(&cluster, prim, &format!("echo alone > {DATA}/b && sync"));
    assert!(out.status.success(), "writes while ALONE: {out:?}");
    let on_primary = std::fs::read_to_string(real(&cluster, prim).join("log")).expect("log");
    for i in &acked {
        assert!(
            on_primary.lines().any(|l| l == format!("line{i}")),
            "acknowledged line {i} is on the primary"
        );
    }

    // The secondary returns and is brought up to date; mirroring resumes.
    cluster.start_daemon(second).expect("restart the secondary");
    cluster
        .wait_states(SETTLE, |a, b| {
            let (p, s) = if prim == "node1" { (a, b) } else { (b, a) };
            settled(p, "PRIM") && settled(s, "SECOND")
        })
        .expect("PRIM/SECOND again");
    // The read-only mount left by the killed daemon was replaced, not stacked.
    let on_second = mounts(&cluster, second);
    assert!(
        on_second.lines().count() == 1 && on_second.contains(" ro,"),
        "the returning secondary has one read-only mount on {DATA}: {on_second}"
    );
    assert!(
        wait_until(SETTLE, Duration::from_millis(100), || {
            tree(&real(&cluster, prim)) == tree(&real(&cluster, second))
        }),
        "trees identical after the return; primary log:\n{}",
        cluster.module_log(prim)
    );
    let out = sh(&cluster, prim, &format!("echo back > {DATA}/c && sync"));
    assert!(out.status.success());
    assert!(
        wait_until(SETTLE, Duration::from_millis(50), || {
            std::fs::read(real(&cluster, second).join("c")).ok() == Some(b"back\n".to_vec())
        }),
        "mirroring after the return"
    );
    stopped_without_mounts(&cluster);
}

#[test]
fn data_on_both_sides_is_refused_until_the_administrator_discards_one_copy() {
    let cluster = lab(options());
    // Both nodes hold data of their own, with an 8 MiB file in common.
    let common: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    for (host, own) in [("node1", "one"), ("node2", "two")] {
        let dir = real(&cluster, host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("common"), &common).unwrap();
        std::fs::write(dir.join(own), own).unwrap();
    }
    cluster.start_module().expect("start");
    let (prim, second) = cluster.wait_pair(SETTLE).expect("a pair");
    let refused = |cluster: &MirrorLab| {
        cluster.replication_problem(
            prim,
            &[
                "no shared history",
                "holdfast second -m demo --discard-data",
            ],
        )
    };
    assert!(
        wait_until(SETTLE, Duration::from_millis(50), || refused(&cluster)),
        "the primary refuses to replicate over unrelated data and names the command; log:\n{}",
        cluster.module_log(prim)
    );
    let shown = cluster
        .run_cli_checked(prim, &["state", "-m", "demo"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("--discard-data"),
        "holdfast state says which command chooses: {shown:?}"
    );
    let own = if second == "node1" { "one" } else { "two" };
    assert!(
        real(&cluster, second).join(own).exists(),
        "the secondary's data is left alone"
    );

    // `second --discard-data` is refused while the module runs: nothing changes.
    let out = cluster
        .cli(second, &["second", "-m", "demo", "--discard-data"])
        .unwrap();
    assert!(!out.status.success(), "refused while started: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));
    assert!(refused(&cluster), "still refused");

    // The administrator keeps the primary's copy.
    cluster
        .run_cli_checked(second, &["stop", "-m", "demo"])
        .unwrap();
    cluster
        .run_cli_checked(second, &["second", "-m", "demo", "--discard-data"])
        .unwrap();
    // `holdfast progress` follows the resynchronisation to its end.
    let mut follower = cluster
        .lab
        .command(prim, &cluster.executables().holdfast)
        .unwrap()
        .args(["progress", "-m", "demo"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ended = wait_until(SETTLE, Duration::from_millis(50), || {
        matches!(follower.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = follower.kill();
    }
    let followed = follower.wait_with_output().unwrap();
    assert!(
        ended && followed.status.success(),
        "holdfast progress ends when mirroring: {followed:?}\n{}",
        cluster.module_log(prim)
    );
    assert!(
        String::from_utf8_lossy(&followed.stdout).contains(&format!("{DATA} mirroring")),
        "{followed:?}"
    );
    assert!(
        tree(&real(&cluster, prim)) == tree(&real(&cluster, second)),
        "the discarded copy was replaced"
    );
    // Only the differing blocks travelled, not the common 8 MiB.
    let sent: Vec<u64> = cluster
        .module_log(prim)
        .lines()
        .filter_map(|l| l.split("resynchronised (").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    assert!(
        sent.len() == 1 && sent[0] < 1 << 20,
        "one resynchronisation sending only what differs: {sent:?}"
    );
    let second_log = cluster.module_log(second);
    assert!(
        second_log.contains("discarded by the administrator"),
        "{second_log}"
    );
}

#[test]
fn a_copy_whose_resynchronisation_was_cut_short_is_never_promoted() {
    let options = MirrorOptions {
        module_extra: "default_primary = \"node1\"".into(),
        ..options()
    };
    let (mut cluster, prim, second) = started(options);
    assert_eq!(prim, "node1");
    // The secondary stops cleanly; the primary writes what it will have to
    // bring back: a resynchronisation long enough to be cut.
    cluster
        .run_cli_checked(second, &["stop", "-m", "demo"])
        .unwrap();
    cluster
        .wait_states(SETTLE, |_, b| settled(b, "STOP"))
        .expect("stopped");
    let out = sh(
        &cluster,
        prim,
        &format!("dd if=/dev/urandom of={DATA}/big bs=1M count=32 conv=fsync status=none"),
    );
    assert!(out.status.success(), "{out:?}");
    // The secondary's generation record (its /var/lib/holdfast).
    let record = cluster
        .lab
        .host_dir(second)
        .unwrap()
        .join("var-lib-holdfast/modules/demo/replication/0/generations");
    let incomplete =
        || std::fs::read_to_string(&record).is_ok_and(|t| t.contains("\"incomplete\": true"));
    cluster
        .run_cli_checked(second, &["second", "-m", "demo"])
        .unwrap();
    // Killed as soon as the secondary recorded its copy incomplete: 32 MiB
    // take far longer to send than this takes to notice.
    assert!(
        wait_until(SETTLE, Duration::from_millis(2), incomplete),
        "the resynchronisation begins: {:?}\n{}\n{}",
        std::fs::read_to_string(&record),
        cluster.module_log(prim),
        cluster.module_log(second)
    );
    cluster.kill(prim).expect("kill -9 the primary mid-resync");
    assert!(incomplete(), "the resynchronisation was cut short");
    // Past the heartbeat timeout the secondary does not take over: it
    // waits and says why.
    let waiting = cluster.wait_states(SETTLE, |a, b| {
        let s = if second == "node1" { a } else { b };
        s.as_ref()
            .is_some_and(|s| s.state == "WAIT" && s.reason.contains("not be up to date"))
    });
    if let Err(e) = waiting {
        panic!("{e}\n{}", cluster.module_log(second));
    }
    // The primary returns and finishes the job.
    cluster.start_daemon(prim).unwrap();
    let (p, _) = cluster.wait_pair(SETTLE).expect("pair again");
    assert_eq!(p, prim, "the node with the complete copy is primary");
    assert!(
        wait_until(SETTLE, Duration::from_millis(100), || {
            tree(&real(&cluster, prim)) == tree(&real(&cluster, second))
        }),
        "trees identical after the resync completes"
    );
}

/// What the configuration excludes (SafeKit's `<notreplicated>`) stays on
/// the primary; the rest is mirrored; a hard link across the boundary is
/// refused as between two file systems.
#[test]
fn excluded_paths_stay_on_the_primary() {
    let options = MirrorOptions {
        tail: format!(
            "\n[replication]\nport = 4900\n\n[[replicated]]\ndir = \"{DATA}\"\nexclude = [\"logs\"]\nexclude_names = ['\\.tmp$']\n"
        ),
        ..MirrorOptions::default()
    };
    let (cluster, prim, second) = started(options);
    let out = sh(
        &cluster,
        prim,
        &format!(
            "mkdir {DATA}/logs && echo x > {DATA}/logs/app.log && echo t > {DATA}/scratch.tmp && echo kept > {DATA}/kept && sync"
        ),
    );
    assert!(out.status.success(), "{out:?}");
    let out = sh(&cluster, prim, &format!("ln {DATA}/kept {DATA}/logs/kept"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cross-device"),
        "a link across the boundary is refused: {out:?}"
    );
    assert!(
        wait_until(SETTLE, Duration::from_millis(50), || {
            std::fs::read(real(&cluster, second).join("kept")).ok() == Some(b"kept\n".to_vec())
        }),
        "the rest is mirrored"
    );
    let on_second = tree(&real(&cluster, second));
    assert_eq!(
        on_second.keys().collect::<Vec<_>>(),
        ["kept"],
        "only what is replicated reached the secondary"
    );
    assert!(real(&cluster, prim).join("logs/app.log").exists());
}
