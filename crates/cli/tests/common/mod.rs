//! What the end-to-end lab tests share: the two executables, how long a
//! cluster may take to settle, the replicated directory, and the waits and
//! commands that fail the test with both nodes' module logs.
//!
//! Each test file compiles this module and uses part of it.
#![allow(dead_code)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use holdfast_lab::cluster::{MirrorLab, MirrorOptions, NodeState};
use holdfast_lab::{wait_until, Executables};

/// How long a cluster may take to settle after a start or a fault.
pub const SETTLE: Duration = Duration::from_secs(30);

/// The replicated directory (on every node) of [`replicated`].
pub const DATA: &str = "/srv/demo/data";

/// The product this package builds, and the lab tool beside it: cargo
/// names only this package's executables, and `scripts/test` builds the
/// workspace (both) before testing.
pub fn executables() -> Executables {
    Executables::beside_holdfast(env!("CARGO_BIN_EXE_holdfast").as_ref())
        .unwrap_or_else(|e| panic!("the end-to-end tests run both executables: {e}"))
}

/// The module's `[replication]` on `port`, replicating [`DATA`].
pub fn replicated(port: u16) -> String {
    format!("\n[replication]\nport = {port}\n\n[[replicated]]\ndir = \"{DATA}\"\n")
}

/// A lab running `options`' module, daemons started, module not.
pub fn lab(options: MirrorOptions) -> MirrorLab {
    MirrorLab::create(&executables(), options).expect("lab with its daemons")
}

/// A lab whose module runs: (lab, primary, secondary).
pub fn started(options: MirrorOptions) -> (MirrorLab, &'static str, &'static str) {
    MirrorLab::started(&executables(), options, SETTLE).expect("a running pair")
}

/// A number from the environment (trial counts, seeds), if set.
pub fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// Both nodes' module logs, to explain a failure.
pub fn logs(cluster: &MirrorLab) -> String {
    format!(
        "node1 log:\n{}\nnode2 log:\n{}",
        cluster.module_log("node1"),
        cluster.module_log("node2")
    )
}

/// `holdfast log` on `host`: the module log through the API.
pub fn api_log(cluster: &MirrorLab, host: &str) -> String {
    let out = cluster.cli(host, &["log", "-m", "demo"]).expect("log");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `script` with `sh -c` on `host`, which must succeed.
pub fn sh(cluster: &MirrorLab, host: &str, script: &str) -> Output {
    let out = cluster.sh(host, script).expect("sh runs");
    assert!(out.status.success(), "{script} on {host}: {out:?}");
    out
}

/// Waits until `prim` is PRIM mirroring, the other node SECOND.
pub fn mirroring(cluster: &MirrorLab, prim: &str) {
    if let Err(e) = cluster.wait_mirroring(prim, SETTLE) {
        panic!("{e}\n{}", logs(cluster));
    }
}

/// Content checksums of every file of [`DATA`] as `host` sees it (on the
/// secondary: its read-only view of its copy).
pub fn checksums(cluster: &MirrorLab, host: &str) -> String {
    cluster.tree_digest(host, DATA).expect("sh")
}

/// Waits until both nodes' copies of [`DATA`] are identical.
pub fn identical(cluster: &MirrorLab) {
    let same = wait_until(SETTLE, Duration::from_millis(100), || {
        checksums(cluster, "node1") == checksums(cluster, "node2")
    });
    assert!(same, "trees identical\n{}", logs(cluster));
}

/// `host` holds the virtual IP.
pub fn holds_vip(cluster: &MirrorLab, host: &str) -> bool {
    cluster.holds_vip(host).expect("the host's addresses")
}

/// The states of `(a, the other)` out of the states of node1 and node2.
pub fn ordered<'s>(
    a: &str,
    node1: &'s Option<NodeState>,
    node2: &'s Option<NodeState>,
) -> (&'s Option<NodeState>, &'s Option<NodeState>) {
    if a == "node1" {
        (node1, node2)
    } else {
        (node2, node1)
    }
}

/// `sh -c script` on `host`, its standard input closed: for a background
/// application (set its output, then spawn it).
pub fn sh_command(cluster: &MirrorLab, host: &str, script: &str) -> Command {
    let mut command = cluster.lab.command(host, "sh").expect("host");
    command.args(["-c", script]).stdin(Stdio::null());
    command
}

/// Installs and starts a second mirror module `name` on node1 and node2
/// beside the lab's own, on network 0: `table` is its `[module]` and
/// `[heartbeat]` (and more), the `[[node]]` entries are added.
pub fn start_mirror(cluster: &MirrorLab, name: &str, table: &str) {
    let mut config = table.to_string();
    for host in ["node1", "node2"] {
        let address = cluster.lab.address(host, 0).expect("address");
        config.push_str(&format!(
            "[[node]]\nname = \"{host}\"\naddress = {{ net0 = \"{address}\" }}\n"
        ));
    }
    for host in ["node1", "node2"] {
        let dir = cluster
            .lab
            .host_dir(host)
            .expect("dir")
            .join("etc-holdfast")
            .join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("module.toml"), &config).expect("write");
        let file = format!("/etc/holdfast/{name}/module.toml");
        cluster
            .run_cli_checked(host, &["module", "install", &file])
            .unwrap_or_else(|e| panic!("install {name} on {host}: {e}"));
        cluster
            .run_cli_checked(host, &["start", "-m", name])
            .unwrap_or_else(|e| panic!("start {name} on {host}: {e}"));
    }
}
