//! The web console in a real browser: Debian's chromium, headless, driven
//! by playwright-core (`tests/browser/console.mjs`) from the lab's client
//! host, against two real daemons serving the console over HTTPS. The
//! script asks for the faults (`@ask kill node2`) and this test does them;
//! at the end the node the browser talks to is killed, and the console
//! goes on through the other one without a new login.
//! Screenshots go to `docs/` (the README shows them).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use holdfast_lab::cluster::MirrorOptions;
use holdfast_lab::CLIENT;

const PORT: u16 = 9453;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn console_in_a_browser_start_swap_failover_and_roles() {
    let browser = repository().join("tests/browser");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "the console's test needs Debian's chromium (apt-get install chromium; .ci/run does)"
    );
    assert!(
        browser.join("node_modules/playwright-core").exists(),
        "the console's test needs playwright-core: (cd tests/browser && npm ci; .ci/run does)"
    );
    let mut cluster = common::lab(MirrorOptions {
        vip: true,
        tail: common::replicated(4960),
        // Heartbeats also on a second network, so the first one can be
        // slowed for the resynchronisation without the pair losing sight.
        networks: 2,
        ..MirrorOptions::default()
    });
    let address = |host: &str| cluster.lab.address(host, 0).expect("address");
    let api = |host: &str| format!("{}:{PORT}", address(host));
    let init = cluster
        .run_cli_checked(
            "node1",
            &[
                "cluster",
                "init",
                "--name",
                "lab",
                "--address",
                &api("node1"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let init = String::from_utf8_lossy(&init.stdout).into_owned();
    let password = init
        .lines()
        .find_map(|l| {
            l.split_once("password: ")
                .map(|(_, p)| p.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no password in {init}"));
    let token = init
        .lines()
        .find_map(|l| l.trim().strip_prefix("holdfast cluster join "))
        .unwrap_or_else(|| panic!("no join line in {init}"))
        .to_string();
    cluster
        .run_cli_checked(
            "node2",
            &["cluster", "join", &token, "--address", &api("node2")],
        )
        .unwrap_or_else(|e| panic!("{e}"));

    let client_dir = cluster.lab.host_dir(CLIENT).expect("client dir");
    let shots = client_dir.join("screenshots");
    std::fs::create_dir_all(&shots).expect("mkdir");
    let mut command = cluster.lab.command(CLIENT, "node").expect("client");
    command
        .arg(browser.join("console.mjs"))
        .env("HF_URL_NODE1", format!("https://{}", api("node1")))
        .env("HF_URL_NODE2", format!("https://{}", api("node2")))
        .env("HF_ADMIN_PASSWORD", &password)
        .env("HF_SCREENSHOTS", &shots)
        .env("HF_PROFILES", &client_dir)
        .env("HOME", &client_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut script = command.spawn().expect("node runs");
    let mut answers = script.stdin.take().expect("stdin");
    let said = BufReader::new(script.stdout.take().expect("stdout"));
    let mut steps = Vec::new();
    for line in said.lines() {
        let line = line.expect("the script's output");
        eprintln!("browser: {line}");
        if let Some(step) = line.strip_prefix("@step ") {
            steps.push(step.to_string());
        }
        let Some(what) = line.strip_prefix("@ask ") else {
            continue;
        };
        let done = match what.split_once(' ') {
            Some(("kill", host)) => cluster.kill(host).map_err(|e| e.to_string()),
            // Until `host`, SECOND, has logged its copy up to date.
            Some(("uptodate", host)) => {
                let whole = holdfast_lab::wait_until(
                    common::SETTLE,
                    std::time::Duration::from_millis(100),
                    || {
                        cluster
                            .module_log(host)
                            .contains("this node's data is up to date")
                    },
                );
                whole
                    .then_some(())
                    .ok_or_else(|| format!("{host}'s copy never up to date"))
            }
            Some(("revive", host)) => cluster.start_daemon(host).map_err(|e| e.to_string()),
            // MiB written on `host` while alone, then its first network
            // (the replication's) slowed to 300 Mbit/s: the
            // resynchronisation lasts seconds on any machine, long enough
            // for the browser to see its progress (unslowed, 400 MiB took
            // 1 s on an idle machine and the test missed it).
            Some(("write", rest)) => {
                let (host, mib) = rest.split_once(' ').unwrap_or((rest, "100"));
                let script = format!(
                    "head -c {mib}M /dev/urandom > {}/written-while-alone && sync && \
                     tc qdisc replace dev eth0 root tbf rate 300mbit burst 256kb latency 400ms",
                    common::DATA
                );
                common::sh(&cluster, host, &script);
                Ok(())
            }
            _ => Err(format!("unknown request {what}")),
        };
        let answer = done.map_or_else(|e| e, |()| "ok".to_string());
        writeln!(answers, "{answer}").expect("answer the script");
    }
    let status = script.wait().expect("node exits");
    for shot in [
        "console-grid.png",
        "console-timeline.png",
        "console-replication.png",
    ] {
        let made = shots.join(shot);
        if made.exists() {
            std::fs::copy(&made, repository().join("docs").join(shot)).expect("copy screenshot");
        }
    }
    // A failed run's page, kept for a look after the lab is gone.
    let failure = shots.join("failure.png");
    if failure.exists() {
        let kept = repository().join("target/console-failure.png");
        std::fs::copy(&failure, &kept).expect("copy the failure's screenshot");
        eprintln!("the page at the failure: {}", kept.display());
    }
    let daemon_log = std::fs::read_to_string(
        cluster
            .lab
            .host_dir("node1")
            .expect("dir")
            .join("daemon.log"),
    )
    .unwrap_or_default();
    assert!(
        status.success(),
        "the browser's scenario failed after {steps:?}\n{}",
        common::logs(&cluster)
    );
    assert_eq!(steps.last().map(String::as_str), Some("done"), "{steps:?}");
    assert!(
        steps.iter().any(|s| s.starts_with("through node2 after")),
        "the console went on through node2: {steps:?}"
    );
    println!("steps: {steps:?}");
    assert!(
        daemon_log
            .lines()
            .any(|l| l.contains("refused POST /v1/modules/demo/command to watcher")),
        "the monitor's forged command is logged as refused"
    );
}
