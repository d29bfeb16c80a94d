//! SafeKit's operator commands on real test hosts: `waitstate`,
//! `waitstop`, `level`, `confcheck`, `logsave`, and the administrator's
//! settings — `errd off` keeps a dead application from being restarted
//! (on again, it is), `failover off` keeps the secondary from taking over
//! (it waits for `prim`), `boot off` is kept on disk; `forcestop` ends a
//! stop that hangs.

mod common;

use std::time::Duration;

use common::{api_log, started, SETTLE};
use holdfast_lab::cluster::{settled, MirrorOptions};
use holdfast_lab::wait_until;

const PROCESS_CHECKER: &str = r#"
[[checker]]
name = "app"
type = "process"
command = "holdfast-lab"
args_regex = "sample-app"
action = "restart"
interval = "200ms"
"#;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn operator_commands_wait_report_and_set_what_the_module_may_do() {
    let (mut cluster, prim, second) = started(MirrorOptions {
        tail: PROCESS_CHECKER.into(),
        ..MirrorOptions::default()
    });

    // The version, and the same configuration on both nodes.
    let level = cluster.run_cli_checked(prim, &["level"]).unwrap();
    assert!(text(&level).contains("holdfast "), "{}", text(&level));
    let fingerprint = |host: &str| {
        let out = cluster
            .run_cli_checked(host, &["confcheck", "-m", "demo"])
            .unwrap();
        let said = text(&out);
        assert!(said.contains("configuration valid"), "{said}");
        said.rsplit(' ').next().unwrap().trim().to_string()
    };
    assert_eq!(fingerprint(prim), fingerprint(second));

    // Waiting for a state: reached at once, or not within the timeout.
    let out = cluster
        .run_cli_checked(
            prim,
            &["waitstate", "-m", "demo", "PRIM", "--timeout", "10s"],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PRIM");
    let out = cluster
        .cli(
            prim,
            &["waitstate", "-m", "demo", "ALONE", "--timeout", "1s"],
        )
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("did not reach ALONE"), "{}", text(&out));
    let out = cluster
        .cli(prim, &["waitstate", "-m", "demo", "FLYING"])
        .unwrap();
    assert!(text(&out).contains("unknown state"), "{}", text(&out));

    // errd off: the process checker does not run; a dead application stays
    // dead. On again: it is restarted.
    let out = cluster
        .run_cli_checked(prim, &["errd", "off", "-m", "demo"])
        .unwrap();
    assert!(text(&out).contains("errd off"), "{}", text(&out));
    let pid = cluster.app_pid(prim).expect("the application runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Ten checker intervals: with the checker on, it restarts in one or two.
    let back = wait_until(Duration::from_secs(2), Duration::from_millis(50), || {
        cluster.app_pid(prim).is_some()
    });
    assert!(!back, "no checker, no restart\n{}", api_log(&cluster, prim));
    cluster
        .run_cli_checked(prim, &["errd", "on", "-m", "demo"])
        .unwrap();
    assert!(
        cluster.wait_app(prim, SETTLE),
        "{}",
        api_log(&cluster, prim)
    );
    let log = api_log(&cluster, prim);
    assert!(log.contains("called by checker"), "{log}");

    // failover off (on both nodes): the secondary waits instead of
    // taking over, until the administrator forces it.
    for host in [prim, second] {
        let out = cluster
            .run_cli_checked(host, &["failover", "off", "-m", "demo"])
            .unwrap();
        assert!(text(&out).contains("failover off"), "{}", text(&out));
    }
    cluster.kill(prim).unwrap();
    let waiting = wait_until(SETTLE, Duration::from_millis(100), || {
        let state = cluster.state(second);
        settled(&state, "WAIT") && state.is_some_and(|s| s.reason.contains("failover is off"))
    });
    assert!(waiting, "{}", api_log(&cluster, second));
    cluster
        .run_cli_checked(second, &["prim", "-m", "demo"])
        .unwrap();
    cluster
        .run_cli_checked(
            second,
            &["waitstate", "-m", "demo", "ALONE", "--timeout", "30s"],
        )
        .unwrap();

    // boot off is kept, and said by boot status.
    cluster
        .run_cli_checked(second, &["boot", "off", "-m", "demo"])
        .unwrap();
    let out = cluster
        .run_cli_checked(second, &["boot", "status"])
        .unwrap();
    assert!(
        text(&out).contains("module demo: boot off"),
        "{}",
        text(&out)
    );
    let saved = std::fs::read_to_string(
        cluster
            .lab
            .host_dir(second)
            .unwrap()
            .join("var-lib-holdfast/modules/demo/settings.json"),
    )
    .unwrap();
    assert!(saved.contains("\"boot\": false"), "{saved}");

    // The log saved whole; the stop waited for.
    let out = cluster
        .run_cli_checked(second, &["logsave", "-m", "demo", "/etc/holdfast/demo.log"])
        .unwrap();
    assert!(text(&out).contains("saved"), "{}", text(&out));
    let saved = std::fs::read_to_string(
        cluster
            .lab
            .host_dir(second)
            .unwrap()
            .join("etc-holdfast/demo.log"),
    )
    .unwrap();
    assert!(
        saved.contains("failover off, set by the administrator"),
        "{saved}"
    );

    // A stop that hangs (its graceful stop_prim never ends): forcestop
    // kills it, the forced phase runs, and the module stops long before
    // the stop timeout (10 s here).
    let stop_prim = cluster
        .lab
        .host_dir(second)
        .unwrap()
        .join("var-lib-holdfast/modules/demo/bin/stop_prim");
    let original = std::fs::read_to_string(&stop_prim).unwrap();
    let hanging = original.replacen('\n', "\n[ \"$1\" = force ] || exec sleep 600\n", 1);
    std::fs::write(&stop_prim, hanging).unwrap();
    cluster
        .run_cli_checked(second, &["stop", "-m", "demo"])
        .unwrap();
    let out = cluster
        .cli(second, &["waitstop", "-m", "demo", "--timeout", "2s"])
        .unwrap();
    assert!(!out.status.success(), "the stop hangs: {}", text(&out));
    cluster
        .run_cli_checked(second, &["forcestop", "-m", "demo"])
        .unwrap();
    let out = cluster
        .run_cli_checked(second, &["waitstop", "-m", "demo", "--timeout", "5s"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "STOP");
    let log = api_log(&cluster, second);
    assert!(log.contains("killed by forcestop"), "{log}");
}
