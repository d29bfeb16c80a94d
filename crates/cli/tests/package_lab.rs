//! Must-show 1 of issue 16: a SafeKit `.safe`, written here from the
//! format of SafeKit's user guide (`conf/userconfig.xml` with a virtual IP,
//! a replicated directory and a process checker; `bin/start_prim` and
//! `bin/stop_prim` calling `$SAFE/safekit printi|printe`; a helper program
//! in `bin/`), installs with one command and no edit on two lab nodes
//! that already run another module, lists what it does not map, and fails
//! over. Bad packages are refused and change nothing.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{logs, SETTLE};
use holdfast_lab::cluster::{MirrorLab, MirrorOptions, NodeState};
use holdfast_lab::wait_until;

const VIP: &str = "198.18.0.51";
const DATA: &str = "/srv/web/data";

const USERCONFIG: &str = r#"<!DOCTYPE safe>
<safe>
<service mode="mirror" defaultprim="alone" maxloop="3" loop_interval="24" failover="on">
  <heart pulse="100" timeout="3000">
    <heartbeat name="default" ident="flow"/>
  </heart>
  <vip>
    <interface_list>
      <interface check="on" arpreroute="on">
        <real_interface>
          <virtual_addr addr="198.18.0.51" where="one_side_alias"/>
        </real_interface>
      </interface>
    </interface_list>
  </vip>
  <rfs mountover="off" async="second" acl="off" nbrei="3">
    <replicated dir="/srv/web/data" mode="read_only"/>
  </rfs>
  <errd polltimer="2">
    <proc name="webapp" atleast="1" action="restart" class="prim"/>
  </errd>
  <user nicestoptimeout="10" forcestoptimeout="10" logging="userlog"/>
</service>
</safe>
"#;

const START_PRIM: &str = r#"#!/bin/sh
# SafeKit's start_prim: starts the application (a helper of bin/).
"$SAFE/safekit" printi "start_prim: starting webapp"
"$SAFEUSERBIN/webapp" </dev/null >/dev/null 2>&1 &
echo $! > "$SAFEUSERVAR/webapp.pid"
"#;

const STOP_PRIM: &str = r#"#!/bin/sh
"$SAFE/safekit" printi "stop_prim: stopping webapp"
if [ -f "$SAFEUSERVAR/webapp.pid" ]; then
  kill "$(cat "$SAFEUSERVAR/webapp.pid")" 2>/dev/null
  rm -f "$SAFEUSERVAR/webapp.pid"
else
  "$SAFE/safekit" printe "stop_prim: webapp was not running"
fi
exit 0
"#;

/// The helper: writes the node it runs on (from the scripts' environment)
/// and a count into the replicated directory.
const WEBAPP: &str = r#"#!/bin/sh
n=0
while :; do
  n=$((n + 1))
  echo "$HOLDFAST_NODE $n" > /srv/web/data/beat.tmp
  mv /srv/web/data/beat.tmp /srv/web/data/beat
  sleep 0.2
done
"#;

/// `web.safe` as SafeKit writes it: conf/ and bin/, Unix modes.
fn safe_package() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text, mode) in [
        ("conf/userconfig.xml", USERCONFIG, 0o644),
        ("bin/start_prim", START_PRIM, 0o755),
        ("bin/stop_prim", STOP_PRIM, 0o755),
        ("bin/webapp", WEBAPP, 0o755),
    ] {
        let options = zip::write::SimpleFileOptions::default().unix_permissions(mode);
        zip.start_file(name, options).expect("zip entry");
        zip.write_all(text.as_bytes()).expect("zip write");
    }
    zip.finish().expect("zip").into_inner()
}

/// SafeKit's cluster.xml of the lab's two nodes: the node's own cluster
/// configuration, which a module package does not carry.
fn cluster_xml(cluster: &MirrorLab) -> String {
    let mut lan = String::new();
    for host in ["node1", "node2"] {
        let addr = cluster.lab.address(host, 0).expect("address");
        lan.push_str(&format!("<node name=\"{host}\" addr=\"{addr}\"/>\n"));
    }
    format!("<cluster>\n<lans>\n<lan name=\"default\">\n{lan}</lan>\n</lans>\n</cluster>\n")
}

fn web(cluster: &MirrorLab, host: &str) -> Option<NodeState> {
    let out = cluster.cli(host, &["state", "-m", "web", "--json"]).ok()?;
    let states: Vec<NodeState> = serde_json::from_slice(&out.stdout).ok()?;
    states.into_iter().next()
}

fn settled(state: &Option<NodeState>, name: &str) -> bool {
    state
        .as_ref()
        .is_some_and(|s| s.state == name && !s.transient)
}

fn web_log(cluster: &MirrorLab, host: &str) -> String {
    let out = cluster.cli(host, &["log", "-m", "web"]).expect("log");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn beat_of(cluster: &MirrorLab, host: &str) -> Option<(String, u64)> {
    let path = cluster.host_path(host, "/srv/web/data/beat").ok()?;
    let text = std::fs::read_to_string(path).ok()?;
    let (node, n) = text.trim().split_once(' ')?;
    Some((node.to_string(), n.parse().ok()?))
}

#[test]
fn a_safekit_package_installs_unchanged_and_fails_over() {
    let mut cluster = common::lab(MirrorOptions::default());
    let package = safe_package();
    for host in ["node1", "node2"] {
        let etc = cluster.lab.host_dir(host).unwrap().join("etc-holdfast");
        std::fs::write(etc.join("cluster.xml"), cluster_xml(&cluster)).unwrap();
        std::fs::write(etc.join("web.safe"), &package).unwrap();
        common::sh(&cluster, host, &format!("mkdir -p {DATA}"));
    }

    // Bad packages: refused, naming what is wrong, nothing installed.
    let etc1 = cluster.lab.host_dir("node1").unwrap().join("etc-holdfast");
    std::fs::write(etc1.join("notzip.safe"), USERCONFIG).unwrap();
    let mut traversal = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for name in ["conf/userconfig.xml", "bin/../../escape"] {
        traversal
            .start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        traversal.write_all(USERCONFIG.as_bytes()).unwrap();
    }
    std::fs::write(
        etc1.join("evil.safe"),
        traversal.finish().unwrap().into_inner(),
    )
    .unwrap();
    for (file, expected) in [
        ("notzip.safe", "not a zip archive"),
        ("evil.safe", "bin/../../escape"),
    ] {
        let out = cluster
            .cli(
                "node1",
                &["module", "install", &format!("/etc/holdfast/{file}")],
            )
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expected),
            "{file}: {err}"
        );
    }
    let listed = cluster
        .run_cli_checked("node1", &["module", "list"])
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(listed.lines().count(), 1, "only demo: {listed}");

    // One command per node, no edit: what is not mapped is listed.
    for host in ["node1", "node2"] {
        let check = cluster
            .run_cli_checked(host, &["module", "check", "/etc/holdfast/web.safe"])
            .expect("module check");
        let said = String::from_utf8_lossy(&check.stdout);
        assert!(said.contains("can be installed on this node"), "{said}");
        let out = cluster
            .run_cli_checked(host, &["module", "install", "/etc/holdfast/web.safe"])
            .expect("install web.safe");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("module web (id 1) installed"), "{said}");
        let warnings = String::from_utf8_lossy(&out.stderr);
        for unmapped in [
            "<interface check>",
            "<rfs mountover>",
            "<rfs acl>",
            "<rfs nbrei>",
        ] {
            assert!(
                warnings.contains(unmapped),
                "{unmapped} not reported: {warnings}"
            );
        }
        assert!(!warnings.contains("no scripts"), "{warnings}");
        assert!(!warnings.contains("<heartbeat ident>"), "{warnings}");
    }

    // Two modules: the quiet state needs to know which one.
    let out = cluster.cli("node1", &["state", "-lq"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("name one with -m"),
        "{err}"
    );

    for host in ["node1", "node2"] {
        cluster
            .run_cli_checked(host, &["start", "-m", "web"])
            .expect("start web");
    }
    let pair = wait_until(SETTLE, Duration::from_millis(100), || {
        let (a, b) = (web(&cluster, "node1"), web(&cluster, "node2"));
        (settled(&a, "PRIM") && settled(&b, "SECOND"))
            || (settled(&a, "SECOND") && settled(&b, "PRIM"))
    });
    assert!(pair, "no PRIM/SECOND pair\n{}", logs(&cluster));
    let (prim, second) = if settled(&web(&cluster, "node1"), "PRIM") {
        ("node1", "node2")
    } else {
        ("node2", "node1")
    };
    let running = wait_until(SETTLE, Duration::from_millis(100), || {
        beat_of(&cluster, prim).is_some_and(|(node, n)| node == prim && n > 3)
    });
    assert!(
        running,
        "the helper runs on {prim}\n{}",
        web_log(&cluster, prim)
    );
    let log = web_log(&cluster, prim);
    assert!(log.contains("start_prim: starting webapp"), "{log}");
    let vip_held = common::sh(
        &cluster,
        prim,
        &format!("ip -o addr show | grep -c ' {VIP}/'"),
    );
    assert_eq!(String::from_utf8_lossy(&vip_held.stdout).trim(), "1");
    // Replicated: the secondary's copy follows the helper's writes.
    let mirrored = wait_until(SETTLE, Duration::from_millis(100), || {
        beat_of(&cluster, second).is_some_and(|(node, n)| node == prim && n > 5)
    });
    assert!(mirrored, "the secondary receives the helper's writes");

    // Failover: the primary host dies with everything on it.
    let before = beat_of(&cluster, second).expect("replicated beat").1;
    cluster.kill(prim).expect("kill the primary");
    let alone = wait_until(SETTLE, Duration::from_millis(100), || {
        settled(&web(&cluster, second), "ALONE")
    });
    assert!(alone, "{second} takes over\n{}", web_log(&cluster, second));
    let took_over = wait_until(SETTLE, Duration::from_millis(100), || {
        beat_of(&cluster, second).is_some_and(|(node, n)| node == second && n > 0)
    });
    assert!(took_over, "the helper runs on {second}");
    let vip_held = common::sh(
        &cluster,
        second,
        &format!("ip -o addr show | grep -c ' {VIP}/'"),
    );
    assert_eq!(String::from_utf8_lossy(&vip_held.stdout).trim(), "1");
    assert!(before > 5, "the data the primary wrote was there before");

    // Export and uninstall on the survivor: a package, and a backup.
    cluster
        .run_cli_checked(second, &["stop", "-m", "web"])
        .expect("stop web");
    let stopped = wait_until(SETTLE, Duration::from_millis(100), || {
        settled(&web(&cluster, second), "STOP")
    });
    assert!(stopped, "web stops on {second}");
    let out = cluster
        .run_cli_checked(
            second,
            &[
                "module",
                "export",
                "-m",
                "web",
                "--out",
                "/etc/holdfast/web.zip",
            ],
        )
        .expect("export");
    assert!(String::from_utf8_lossy(&out.stdout).contains("exported"));
    let exported = std::fs::read(
        cluster
            .lab
            .host_dir(second)
            .unwrap()
            .join("etc-holdfast/web.zip"),
    )
    .unwrap();
    let package = holdfast_package::Package::from_zip(&exported).expect("a native package");
    assert!(package.config.contains("id = 1"), "{}", package.config);
    assert_eq!(package.bin["webapp"].bytes, WEBAPP.as_bytes());
    let out = cluster
        .run_cli_checked(second, &["module", "uninstall", "-m", "web"])
        .expect("uninstall");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("/var/lib/holdfast/backups/web-"), "{said}");
    // The backup installs again as it was.
    let out = cluster
        .run_cli_checked(second, &["module", "install", "/etc/holdfast/web.zip"])
        .expect("install the export");
    assert!(String::from_utf8_lossy(&out.stdout).contains("module web (id 1) installed"));
}
