//! The Debian package on a fresh Debian: `cargo deb` builds it from the
//! tested executable, `dpkg -i` installs it in a Debian made by
//! debootstrap (cached between runs, used through an overlay so each run
//! starts fresh), and that Debian is booted with systemd in
//! `systemd-nspawn` (its own network namespace: nothing reaches the
//! machine's): the units verify, nothing was enabled or started by the
//! installation, `systemctl start holdfast` starts the daemon, which
//! answers, and the log rotation's configuration parses.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian release of the test system.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Runs inside the booted system, as its only unit, then powers it off.
const CHECK_UNIT: &str = r#"[Unit]
Description=Check of the installed holdfast package

[Service]
Type=oneshot
ExecStart=/bin/sh /check.sh
ExecStartPost=/bin/systemctl poweroff --no-block
"#;

/// The check itself: one `name: value` line per finding, in /check-result.
const CHECK_SCRIPT: &str = r#"exec > /check-result 2>&1
systemd-analyze verify holdfast.service holdfast-witness.service && echo "verify: ok"
echo "enabled after install: $(systemctl is-enabled holdfast.service)"
echo "active after install: $(systemctl is-active holdfast.service)"
test -d /etc/holdfast && test -d /var/lib/holdfast && echo "directories: ok"
holdfast cluster keygen --out /etc/holdfast/cluster.key
systemctl start holdfast.service
i=0
while [ $i -lt 200 ] && ! holdfast state >/dev/null 2>&1; do i=$((i+1)); sleep 0.05; done
echo "active: $(systemctl is-active holdfast.service)"
echo "main pid: $(systemctl show -p MainPID --value holdfast.service)"
holdfast state --json >/dev/null && echo "api: ok"
logrotate -d /etc/logrotate.d/holdfast 2>/dev/null && echo "logrotate: ok"
systemctl stop holdfast.service
echo "after stop: $(systemctl is-active holdfast.service)"
"#;

/// Installs the package in a fresh copy of the Debian at `$1` (through an
/// overlay in this private mount namespace: gone when it ends), then boots
/// it with the check unit. `$2`: the package, `$3`: a scratch directory.
const RUN: &str = r#"set -e
root=$1 deb=$2 work=$3
mkdir -p "$work/upper" "$work/work" "$work/merged"
mount -t overlay overlay -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/work" "$work/merged"
cp "$deb" "$work/merged/tmp/holdfast.deb"
chroot "$work/merged" dpkg -i /tmp/holdfast.deb > "$work/dpkg.log" 2>&1
cp "$work/check.sh" "$work/merged/check.sh"
cp "$work/holdfast-check.service" "$work/merged/etc/systemd/system/"
timeout 180 systemd-nspawn -D "$work/merged" --register=no --keep-unit --private-network \
    --console=pipe -b systemd.unit=holdfast-check.service > "$work/nspawn.log" 2>&1 || true
cp "$work/merged/check-result" "$work/result"
"#;

fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tool the test needs, with the package that brings it.
fn require(tool: &str, install: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "the package test needs {tool}: {install}");
}

/// The fresh Debian, made once and kept under cargo's test directory.
fn debian() -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("debian-{SUITE}"));
    if cache.join("etc/debian_version").exists() {
        return cache;
    }
    // Made beside it and renamed once complete: a killed run leaves no
    // half system to be taken for a cached one.
    let partial = cache.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    run(Command::new("debootstrap").args([
        "--variant=minbase",
        "--include=systemd,systemd-sysv,dbus,logrotate",
        SUITE,
        partial.to_str().unwrap(),
        MIRROR,
    ]));
    std::fs::rename(&partial, &cache).unwrap();
    cache
}

#[test]
fn the_deb_installs_on_a_fresh_debian_and_its_unit_starts_the_daemon() {
    require("debootstrap", "apt install debootstrap");
    require("systemd-nspawn", "apt install systemd-container");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_cargo_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_cargo_deb,
        "the package test needs cargo-deb: cargo install cargo-deb --locked"
    );
    let work = tempfile::tempdir().unwrap();
    // The executable this test run built (its dev profile), not a release
    // build: the package's content is what is tested, not its optimisation.
    run(Command::new(&cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "deb",
            "-p",
            "holdfast-cli",
            "--no-build",
            "--profile",
            "dev",
        ])
        .args(["--fast", "--quiet", "-o"])
        .arg(work.path().join("holdfast.deb")));
    let root = debian();
    let scratch = work.path().join("run");
    std::fs::create_dir(&scratch).unwrap();
    std::fs::write(scratch.join("check.sh"), CHECK_SCRIPT).unwrap();
    std::fs::write(scratch.join("holdfast-check.service"), CHECK_UNIT).unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", RUN, "sh"])
        .arg(&root)
        .arg(work.path().join("holdfast.deb"))
        .arg(&scratch)
        .output()
        .unwrap();
    let read = |name: &str| std::fs::read_to_string(scratch.join(name)).unwrap_or_default();
    let explain = format!(
        "{out:?}\ndpkg:\n{}\nboot:\n{}",
        read("dpkg.log"),
        read("nspawn.log")
    );
    assert!(out.status.success(), "{explain}");
    assert!(
        read("dpkg.log").contains("holdfast: not started."),
        "the postinst says what to do next: {explain}"
    );
    let result = read("result");
    for expected in [
        "verify: ok",
        "enabled after install: disabled",
        "active after install: inactive",
        "directories: ok",
        "active: active",
        "api: ok",
        "logrotate: ok",
        "after stop: inactive",
    ] {
        assert!(
            result.lines().any(|l| l == expected),
            "{expected:?} in the booted system's check:\n{result}\n{explain}"
        );
    }
    let pid = result
        .lines()
        .find_map(|l| l.strip_prefix("main pid: "))
        .and_then(|p| p.parse::<u32>().ok());
    assert!(
        pid.is_some_and(|p| p > 0),
        "the unit's daemon ran:\n{result}"
    );
}
