//! Real-namespace tests of the lab (need root, iproute2, util-linux, nft).
//! Each test builds its own lab; ids are unique, so they run in parallel.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use holdfast_lab::{attach, clean_stale, list_labs, wait_until, Lab, LabError, LabSpec};

const SETTLE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

fn spec(hosts: usize, networks: usize, client: bool) -> LabSpec {
    LabSpec {
        hosts,
        networks,
        client,
    }
}

/// A TCP listener on `host`, bound to its address on `network`.
fn listen(lab: &Lab, host: &str, network: usize) -> (TcpListener, SocketAddr) {
    let ip = lab.address(host, network).unwrap();
    let listener = lab
        .run_in_netns(host, move || TcpListener::bind((ip, 0)))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Whether `from` can open a TCP connection to `to` within one second,
/// using only bash's /dev/tcp inside the host (a real process on the host,
/// through `lab.command`).
fn connects(lab: &Lab, from: &str, to: SocketAddr) -> bool {
    let script = format!("echo hi > /dev/tcp/{}/{}", to.ip(), to.port());
    lab.command(from, "timeout")
        .unwrap()
        .args(["1", "bash", "-c", &script])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Drains pending connections so the backlog never fills.
fn drain(listener: &TcpListener) {
    for _ in 0..1000 {
        if listener.accept().is_err() {
            break;
        }
    }
}

fn eventually_connects(lab: &Lab, from: &str, to: SocketAddr, listener: &TcpListener) -> bool {
    let ok = wait_until(SETTLE, POLL, || connects(lab, from, to));
    drain(listener);
    ok
}

fn netns_names() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn assert_gone(id: &str) {
    let prefix = format!("hf{id}");
    assert!(
        !netns_names().contains(&prefix),
        "namespaces of {id} left: {}",
        netns_names()
    );
    let run_dir = format!("/run/holdfast-lab/{id}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(&run_dir)),
        "mounts of {id} left: {mounts}"
    );
    assert!(!Path::new(&run_dir).exists(), "{run_dir} left");
}

#[test]
fn addresses_and_names_follow_the_plan() {
    let lab = Lab::create(spec(2, 2, true)).unwrap();
    assert_eq!(lab.id().len(), 6);
    assert_eq!(lab.hosts(), ["node1", "node2", "client"]);
    assert_eq!(lab.nodes(), ["node1", "node2"]);
    assert_eq!(
        lab.address("node2", 1).unwrap(),
        Ipv4Addr::new(198, 18, 1, 12)
    );
    assert_eq!(
        lab.address("client", 0).unwrap(),
        Ipv4Addr::new(198, 18, 0, 100)
    );
    assert!(matches!(
        lab.address("node3", 0),
        Err(LabError::UnknownHost { .. })
    ));
    assert!(matches!(
        lab.address("node1", 2),
        Err(LabError::UnknownNetwork { .. })
    ));
    assert!(matches!(
        lab.partition("node1", "node1"),
        Err(LabError::InvalidFault(_))
    ));
    assert!(matches!(
        lab.set_loss("node1", 101),
        Err(LabError::InvalidFault(_))
    ));
    // Nothing in the machine's own namespace carries a lab address.
    let out = std::process::Command::new("ip")
        .args(["-4", "addr"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("198.18."));
    // The registry describes it, and another process could attach.
    let info = list_labs().into_iter().find(|i| i.id == lab.id()).unwrap();
    assert_eq!(info.owner_pid, std::process::id());
    assert!(info.owner_alive());
    let handle = attach(lab.id()).unwrap();
    assert_eq!(
        handle.address("node1", 0).unwrap(),
        lab.address("node1", 0).unwrap()
    );
    assert!(matches!(attach("zzzzzz"), Err(LabError::NotFound(_))));
    lab.destroy().unwrap();
}

#[test]
fn invalid_spec_creates_nothing() {
    for bad in [spec(0, 1, false), spec(1, 0, false), spec(1, 3, true)] {
        assert!(matches!(Lab::create(bad), Err(LabError::InvalidSpec(_))));
    }
}

#[test]
fn connectivity_and_network_faults() {
    let lab = Lab::create(spec(2, 2, true)).unwrap();
    let (l0, n2_net0) = listen(&lab, "node2", 0);
    let (l1, n2_net1) = listen(&lab, "node2", 1);
    let (lc, client0) = listen(&lab, "client", 0);

    assert!(eventually_connects(&lab, "node1", n2_net0, &l0));
    assert!(eventually_connects(&lab, "node1", n2_net1, &l1));
    assert!(eventually_connects(&lab, "node1", client0, &lc));

    // Link down on network 0 cuts only network 0.
    lab.link_down("node1", 0).unwrap();
    lab.link_down("node1", 0).unwrap();
    assert!(!connects(&lab, "node1", n2_net0));
    assert!(eventually_connects(&lab, "node1", n2_net1, &l1));
    lab.link_up("node1", 0).unwrap();
    assert!(eventually_connects(&lab, "node1", n2_net0, &l0));

    // A partition cuts node1 <-> node2 on both networks, not node1 <-> client.
    lab.partition("node1", "node2").unwrap();
    lab.partition("node2", "node1").unwrap();
    assert!(!connects(&lab, "node1", n2_net0));
    assert!(!connects(&lab, "node1", n2_net1));
    assert!(eventually_connects(&lab, "node1", client0, &lc));
    assert!(eventually_connects(&lab, "node2", client0, &lc));
    lab.heal("node1", "node2").unwrap();
    lab.heal("node1", "node2").unwrap();
    assert!(eventually_connects(&lab, "node1", n2_net0, &l0));
    assert!(eventually_connects(&lab, "node1", n2_net1, &l1));

    // Total loss on node2 cuts it; a partial rule is installed as asked.
    lab.set_loss("node2", 100).unwrap();
    assert!(!connects(&lab, "node1", n2_net0));
    assert!(!connects(&lab, "client", n2_net1));
    lab.set_loss("node2", 30).unwrap();
    let rules = lab.fault_rules().unwrap();
    assert!(rules.contains("numgen random mod 100 < 30 drop"), "{rules}");
    assert!(!rules.lines().any(|l| l.trim() == "drop"), "{rules}");
    lab.clear_loss("node2").unwrap();
    lab.clear_loss("node2").unwrap();
    assert!(eventually_connects(&lab, "node1", n2_net0, &l0));
    assert!(eventually_connects(&lab, "client", n2_net1, &l1));
    lab.destroy().unwrap();
}

#[test]
fn kill_host_kills_its_processes() {
    let lab = Lab::create(spec(2, 1, false)).unwrap();
    let mut sleeper = lab
        .command("node1", "sleep")
        .unwrap()
        .arg("1000")
        .spawn()
        .unwrap();
    let mut other = lab
        .command("node2", "sleep")
        .unwrap()
        .arg("1000")
        .spawn()
        .unwrap();
    let pid = sleeper.id() as i32;
    assert!(wait_until(SETTLE, POLL, || lab
        .host_pids("node1")
        .unwrap()
        .contains(&pid)));
    lab.kill_host("node1").unwrap();
    let status = sleeper.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(lab.host_pids("node1").unwrap().is_empty());
    lab.kill_host("node1").unwrap();
    // The other host is untouched.
    assert!(other.try_wait().unwrap().is_none());
    lab.destroy().unwrap();
    // Clean-up killed it too.
    assert!(other.wait().unwrap().code().is_none());
}

#[test]
fn hosts_have_private_directories() {
    let lab = Lab::create(spec(2, 1, false)).unwrap();
    let marker = format!("written in {}", lab.id());
    let status = lab
        .command("node1", "sh")
        .unwrap()
        .args([
            "-c",
            &format!("echo '{marker}' > /srv/x && echo conf > /etc/holdfast/c && echo state > /var/lib/holdfast/s"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let node1 = lab.host_dir("node1").unwrap();
    assert_eq!(
        std::fs::read_to_string(node1.join("srv/x")).unwrap().trim(),
        marker
    );
    assert!(node1.join("etc-holdfast/c").exists());
    assert!(node1.join("var-lib-holdfast/s").exists());
    // Not in the machine's tree, not on node2.
    let machine = std::fs::read_to_string("/srv/x").unwrap_or_default();
    assert_ne!(machine.trim(), marker);
    let on_node2 = lab
        .command("node2", "test")
        .unwrap()
        .args(["-e", "/srv/x"])
        .status()
        .unwrap();
    assert!(!on_node2.success());
    // /sys shows the host's own interfaces.
    let out = lab
        .command("node1", "ls")
        .unwrap()
        .arg("/sys/class/net")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["eth0", "lo"]
    );
    // The machine's namespace has no mount on the hosts' paths from this lab.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let run_dir = lab.run_dir().to_string_lossy().into_owned();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (root, point) = (fields[3], fields[4]);
        assert!(
            !["/srv", "/etc/holdfast", "/var/lib/holdfast"].contains(&point),
            "machine sees {line}"
        );
        assert!(
            !root.contains(&run_dir) || point.starts_with(&run_dir),
            "machine sees {line}"
        );
    }
    lab.destroy().unwrap();
}

#[test]
fn drop_removes_everything() {
    let lab = Lab::create(spec(2, 2, true)).unwrap();
    let id = lab.id().to_string();
    let mut sleeper = lab
        .command("node1", "sleep")
        .unwrap()
        .arg("1000")
        .spawn()
        .unwrap();
    assert!(netns_names().contains(&format!("hf{id}-sw")));
    drop(lab);
    assert_gone(&id);
    assert!(
        sleeper.wait().unwrap().code().is_none(),
        "sleeper not killed"
    );
}

#[test]
fn drop_during_panic_removes_everything() {
    let mut id = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::create(spec(1, 1, true)).unwrap();
        id = lab.id().to_string();
        panic!("test body failed");
    }));
    assert!(result.is_err());
    assert_eq!(id.len(), 6);
    assert_gone(&id);
}

#[test]
fn clean_stale_removes_labs_of_dead_owners() {
    let lab = Lab::create(spec(1, 1, false)).unwrap();
    let id = lab.id().to_string();
    let mut sleeper = lab
        .command("node1", "sleep")
        .unwrap()
        .arg("1000")
        .spawn()
        .unwrap();
    // A pid that certainly belonged to a process now gone.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let path = lab.run_dir().join("lab.json");
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    info["owner_pid"] = dead.id().into();
    std::fs::write(&path, info.to_string()).unwrap();
    std::mem::forget(lab);

    // A live lab of this process must survive.
    let live = Lab::create(spec(1, 1, false)).unwrap();
    let removed = clean_stale(false).unwrap();
    assert!(removed.contains(&id), "{removed:?}");
    assert!(!removed.iter().any(|r| r == live.id()));
    assert_gone(&id);
    assert!(
        sleeper.wait().unwrap().code().is_none(),
        "sleeper not killed"
    );
    assert!(Path::new(&live.run_dir()).exists());
    live.destroy().unwrap();
}

/// A lab id no one uses, without a random-number dependency.
fn fresh_id(salt: u32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:06x}", (nanos ^ std::process::id() ^ salt) & 0xff_ffff)
}

fn sh(script: &str) {
    let status = std::process::Command::new("sh")
        .args(["-c", script])
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

#[test]
fn clean_stale_removes_half_built_leftovers() {
    // As if a process died mid-create: run dir mounted but unregistered (and
    // old), a namespace; plus a namespace with no run dir at all.
    let half = fresh_id(1);
    let orphan = fresh_id(2);
    let dir = format!("/run/holdfast-lab/{half}");
    sh(&format!(
        "mkdir -p {dir} && mount --bind {dir} {dir} && mount --make-private {dir} \
         && ip netns add hf{half}-node1 && ip netns add hf{orphan}-sw \
         && touch -d '2 hours ago' {dir}"
    ));
    let removed = clean_stale(false).unwrap();
    assert!(removed.contains(&half), "{removed:?}");
    assert!(removed.contains(&orphan), "{removed:?}");
    assert_gone(&half);
    assert_gone(&orphan);
}
