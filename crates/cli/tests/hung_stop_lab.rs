//! A module whose replication stop hangs does not stall the daemon: its
//! own heartbeats and another module's pair on the same nodes go on, with
//! no false failover at pulse 100 ms / timeout 500 ms.
//!
//! The hang is a real one: the secondary's copy lives on a file system
//! that stops answering (a `bindfs` mount whose process is stopped, as a
//! hung disk or NFS server would), so the receiver applying a change is
//! stuck in the kernel and stopping it waits for its last word, then for
//! good, until the file system answers again.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{lab, logs, SETTLE};
use holdfast_lab::cluster::{settled, MirrorLab, MirrorOptions, NodeState};
use holdfast_lab::wait_until;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where the module's replicated directory lives; on node2, a `bindfs`
/// mount of [`DISK`].
const FROZEN: &str = "/srv/frozen";
/// The replicated directory.
const DATA: &str = "/srv/frozen/data";
/// What node2's `bindfs` serves.
const DISK: &str = "/srv/frozen-disk";
/// The other module, a mirror pair without replication.
const OTHER: &str = "other";
/// How long the stop is held hung while both modules are watched: many
/// heartbeat timeouts.
const HUNG: Duration = Duration::from_secs(3);

fn options() -> MirrorOptions {
    MirrorOptions {
        pulse: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        module_extra: "default_primary = \"node1\"".into(),
        tail: format!("\n[replication]\nport = 4950\n\n[[replicated]]\ndir = \"{DATA}\"\n"),
        ..MirrorOptions::default()
    }
}

/// The `bindfs` process serving node2's copy; let go (SIGCONT) when
/// dropped, so that nothing stays stuck on it whatever the test's outcome.
struct FileSystem {
    bindfs: Child,
}

impl FileSystem {
    fn mount(cluster: &MirrorLab) -> Self {
        // Over what the installed module made already (its directory).
        common::sh(cluster, "node2", &format!("mkdir -p {DISK}/data {FROZEN}"));
        let bindfs = cluster
            .lab
            .command("node2", "bindfs")
            .expect("node2")
            .args(["-f", "-o", "nonempty", DISK, FROZEN])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bindfs runs");
        let this = FileSystem { bindfs };
        let mounted = wait_until(SETTLE, Duration::from_millis(50), || {
            cluster
                .sh("node2", &format!("mountpoint -q {FROZEN}"))
                .is_ok_and(|o| o.status.success())
        });
        assert!(mounted, "bindfs mounted on {FROZEN}");
        this
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.bindfs.id() as i32)
    }

    /// Every access to the copy waits from now on.
    fn freeze(&self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP to bindfs");
    }

    fn thaw(&self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT to bindfs");
    }
}

impl Drop for FileSystem {
    /// Let go, then unmounted (bindfs unmounts at SIGTERM) and reaped.
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = kill(self.pid(), Signal::SIGTERM);
        if !finished(&mut self.bindfs) {
            eprintln!("bindfs did not end at SIGTERM: killed");
        }
    }
}

/// Installs and starts [`OTHER`] on both nodes, node2 its primary.
fn start_other(cluster: &MirrorLab) {
    let table = format!(
        "[module]\nname = \"{OTHER}\"\nmode = \"mirror\"\ndefault_primary = \"node2\"\n[heartbeat]\nport = 4820\npulse = \"100ms\"\ntimeout = \"500ms\"\nnetworks = [\"net0\"]\n"
    );
    common::start_mirror(cluster, OTHER, &table);
}

/// [`OTHER`]'s state on `host`.
fn other(cluster: &MirrorLab, host: &str) -> Option<NodeState> {
    let out = cluster.cli(host, &["state", "-m", OTHER, "--json"]).ok()?;
    let mut states: Vec<NodeState> = serde_json::from_slice(&out.stdout).ok()?;
    states.pop()
}

/// The other pair as it should stay: node2 PRIM, node1 SECOND.
fn other_paired(cluster: &MirrorLab) -> bool {
    settled(&other(cluster, "node2"), "PRIM") && settled(&other(cluster, "node1"), "SECOND")
}

#[test]
fn a_hung_replication_stop_stalls_neither_its_heartbeats_nor_another_pair() {
    let cluster = lab(options());
    let disk = FileSystem::mount(&cluster);
    cluster.start_module().expect("start");
    common::mirroring(&cluster, "node1");
    start_other(&cluster);
    assert!(
        wait_until(SETTLE, Duration::from_millis(50), || other_paired(&cluster)),
        "the other pair: node2 PRIM, node1 SECOND"
    );
    // Replication reaches node2's copy through bindfs.
    common::sh(&cluster, "node1", &format!("echo one > {DATA}/one"));
    let disk_path = cluster.host_path("node2", DISK).expect("dir");
    assert!(
        wait_until(SETTLE, Duration::from_millis(50), || {
            std::fs::read(disk_path.join("data/one")).ok() == Some(b"one\n".to_vec())
        }),
        "a write reaches node2's copy\n{}",
        logs(&cluster)
    );

    // The copy's file system stops answering; a change arrives, and
    // node2's receiver is stuck applying it.
    disk.freeze();
    let mut writer = common::sh_command(&cluster, "node1", &format!("echo two > {DATA}/two"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("writer");
    // Its stop, once the module is stopped there, hangs.
    let asked = Instant::now();
    let mut stop = cluster
        .lab
        .command("node2", &cluster.executables().holdfast)
        .expect("node2")
        .args(["stop", "-m", "demo"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("holdfast stop");

    // Meanwhile: node1 hears node2's module (fresh heartbeats: a peer
    // state), whose receiver is still stopping, and the other pair stays.
    let mut samples = 0;
    let mut last_heard = Instant::now();
    let mut longest_silence = Duration::ZERO;
    let mut peer_states = std::collections::BTreeSet::new();
    while asked.elapsed() < HUNG {
        let node1 = cluster.state("node1");
        let heard = node1.as_ref().and_then(|s| s.peer_state.clone());
        let now = Instant::now();
        match heard {
            Some(state) => {
                peer_states.insert(state);
                last_heard = now;
            }
            None => longest_silence = longest_silence.max(now - last_heard),
        }
        let receiving = cluster.state("node2").is_some_and(|s| {
            !s.replication.is_empty() && s.replication.iter().all(|d| d.activity == "receiving")
        });
        assert!(
            receiving,
            "node2's receiver still stopping {:?} after the stop (the hang this test needs)\n{}",
            asked.elapsed(),
            logs(&cluster)
        );
        assert!(
            other_paired(&cluster),
            "the other pair unaffected {:?} after the stop: node1 {:?}, node2 {:?}",
            asked.elapsed(),
            other(&cluster, "node1"),
            other(&cluster, "node2")
        );
        samples += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{samples} samples over {HUNG:?} of a hung stop: node1 heard node2's module as {peer_states:?}, \
         longest silence {longest_silence:?} (heartbeat timeout 500 ms)"
    );
    assert!(
        longest_silence < Duration::from_millis(500),
        "node2's module went silent for {longest_silence:?} while its stop hung (heard as {peer_states:?})\n{}",
        logs(&cluster)
    );
    assert!(
        peer_states.contains("STOP"),
        "node1 heard node2 stop: {peer_states:?}"
    );

    // The file system answers again: the stop completes.
    disk.thaw();
    let stopped = wait_until(SETTLE, Duration::from_millis(50), || {
        cluster.state("node2").is_some_and(|s| {
            settled(&Some(s.clone()), "STOP")
                && !s.replication.is_empty()
                && s.replication.iter().all(|d| d.activity == "idle")
        })
    });
    eprintln!(
        "node2's module stopped {:?} after the stop was asked",
        asked.elapsed()
    );
    assert!(
        stopped,
        "node2 stops once its disk answers\n{}",
        logs(&cluster)
    );
    assert!(
        other_paired(&cluster),
        "the other pair unaffected at the end"
    );
    assert!(finished(&mut stop), "holdfast stop returned");
    let _ = writer.kill();
    let _ = writer.wait();
}

/// Whether `child` ends within 10 s (else it is killed); reaped.
fn finished(child: &mut Child) -> bool {
    let ended = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
    }
    let _ = child.wait();
    ended
}
