//! Network checkers in the lab: real namespaces, veth links and a bridge
//! (needs root). Every target is a lab address in 198.18.0.0/15. Each test
//! runs its probes on a current-thread runtime inside one host's network
//! namespace, as the daemon would run on that host.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use holdfast_checkers::{
    AnyProbe, CheckerEvent, Probe, ProbeContext, ProcessScope, Runner, Verdict,
};
use holdfast_config::checker::{
    CheckerConfig, CheckerKind, InterfaceTarget, ProcessChecker, TcpExchange,
};
use holdfast_lab::{Lab, LabHandle, LabSpec};
use tokio::sync::mpsc;

fn lab(hosts: usize) -> Lab {
    Lab::create(LabSpec {
        hosts,
        networks: 1,
        client: false,
    })
    .expect("creating the lab (needs root)")
}

/// Runs `f`'s future to completion on `host` (its network namespace).
fn on_host<F, Fut>(lab: &LabHandle, host: &str, f: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = ()>,
{
    lab.run_in_netns(host, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
    .expect("entering the host");
}

fn down_reason(verdict: Verdict) -> String {
    match verdict {
        Verdict::Down(reason) => reason,
        Verdict::Up => panic!("expected Down, got Up"),
    }
}

async fn next_event(events: &mut mpsc::Receiver<CheckerEvent>, limit: Duration) -> CheckerEvent {
    tokio::time::timeout(limit, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no event within {limit:?}"))
        .expect("the runner is alive")
}

/// An echo-ish server on `listener`: answers "pong" to every line, on a
/// thread ending with the process.
fn serve_pong(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                for line in BufReader::new(stream).lines() {
                    if line.is_err() || writer.write_all(b"pong\n").is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn tcp_probe(address: IpAddr, port: u16, exchange: Option<TcpExchange>) -> AnyProbe {
    let mut config = CheckerConfig::tcp("t", address, port);
    config.timeout = Duration::from_secs(1);
    if let CheckerKind::Tcp(t) = &mut config.kind {
        t.exchange = exchange;
    }
    AnyProbe::build(&config, &ProbeContext::default()).expect("tcp probe")
}

#[test]
fn tcp_checker_detects_refused_hung_and_unreachable() {
    let lab = lab(2);
    let server = IpAddr::V4(lab.address("node2", 0).unwrap());
    let (serving, hung) = lab
        .run_in_netns("node2", || {
            let serving = TcpListener::bind(SocketAddr::new(server, 7000)).unwrap();
            // Listening, but nothing ever accepts: the application is hung.
            let hung = TcpListener::bind(SocketAddr::new(server, 7002)).unwrap();
            (serving, hung)
        })
        .unwrap();
    serve_pong(serving);
    let ping_pong = || {
        Some(TcpExchange {
            send: b"ping\n".to_vec(),
            expect: b"pong".to_vec(),
        })
    };
    let handle = lab.handle().clone();
    on_host(lab.handle(), "node1", || async move {
        assert_eq!(tcp_probe(server, 7000, None).probe().await, Verdict::Up);
        assert_eq!(
            tcp_probe(server, 7000, ping_pong()).probe().await,
            Verdict::Up
        );

        let reason = down_reason(tcp_probe(server, 7001, None).probe().await);
        assert!(
            reason.starts_with("tcp 198.18.0.12:7001: ") && reason.contains("refused"),
            "{reason}"
        );

        // The kernel completes the handshake from the backlog: a bare
        // connect cannot see the hang, the request/answer exchange does.
        assert_eq!(tcp_probe(server, 7002, None).probe().await, Verdict::Up);
        let start = Instant::now();
        let reason = down_reason(tcp_probe(server, 7002, ping_pong()).probe().await);
        assert!(reason.contains("no expected answer within 1s"), "{reason}");
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );

        // Link cut: nothing answers, not even a refusal.
        handle.link_down("node2", 0).unwrap();
        let start = Instant::now();
        let reason = down_reason(tcp_probe(server, 7000, None).probe().await);
        assert!(reason.contains("no connection within 1s"), "{reason}");
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        handle.link_up("node2", 0).unwrap();
        assert_eq!(
            tcp_probe(server, 7000, ping_pong()).probe().await,
            Verdict::Up
        );
    });
    drop(hung);
}

#[test]
fn ping_checker_follows_the_link_with_smoothing() {
    let lab = lab(2);
    let target = lab.address("node2", 0).unwrap();
    let handle = lab.handle().clone();
    on_host(lab.handle(), "node1", || async move {
        let mut config = CheckerConfig::ping("peer", target);
        config.interval = Duration::from_millis(200);
        config.timeout = Duration::from_millis(300);
        // Defaults: Down after 3 lost, Up after 2 answered.
        assert_eq!((config.down_after, config.up_after), (3, 2));

        // One probe on its own: an answer, then none once the link is cut.
        let mut probe = AnyProbe::build(&config, &ProbeContext::default()).unwrap();
        assert_eq!(probe.probe().await, Verdict::Up);
        handle.link_down("node2", 0).unwrap();
        assert_eq!(
            probe.probe().await,
            Verdict::Down("ping 198.18.0.12: no reply within 300ms".into())
        );
        handle.link_up("node2", 0).unwrap();
        assert_eq!(probe.probe().await, Verdict::Up);

        let (tx, mut events) = mpsc::channel(8);
        let _runner = Runner::start(&[config], &ProbeContext::default(), tx).unwrap();
        let event = next_event(&mut events, Duration::from_secs(5)).await;
        assert_eq!(event.checker, "ping.peer");
        assert_eq!(event.verdict, Verdict::Up);

        handle.link_down("node2", 0).unwrap();
        let cut = Instant::now();
        let event = next_event(&mut events, Duration::from_secs(5)).await;
        assert_eq!(
            event.verdict,
            Verdict::Down("ping 198.18.0.12: no reply within 300ms (3 probes in a row)".into())
        );
        // Three lost replies: at least the two intervals between them.
        assert!(
            cut.elapsed() >= Duration::from_millis(400),
            "{:?}",
            cut.elapsed()
        );

        handle.link_up("node2", 0).unwrap();
        let healed = Instant::now();
        let event = next_event(&mut events, Duration::from_secs(5)).await;
        assert_eq!(event.verdict, Verdict::Up);
        // Two answers needed: at least one interval between them.
        assert!(
            healed.elapsed() >= Duration::from_millis(150),
            "{:?}",
            healed.elapsed()
        );
    });
}

fn interface_probe(target: InterfaceTarget) -> AnyProbe {
    let config = CheckerConfig::interface("link", target);
    AnyProbe::build(&config, &ProbeContext::default()).expect("interface probe")
}

#[test]
fn interface_checker_sees_carrier_and_admin_state() {
    let lab = lab(1);
    let address = IpAddr::V4(lab.address("node1", 0).unwrap());
    let netns = lab.netns("node1").unwrap();
    let handle = lab.handle().clone();
    on_host(lab.handle(), "node1", || async move {
        let mut by_name = interface_probe(InterfaceTarget::Name("eth0".into()));
        let mut by_address = interface_probe(InterfaceTarget::Address(address));
        assert_eq!(by_name.probe().await, Verdict::Up);
        assert_eq!(by_address.probe().await, Verdict::Up);

        // The switch side goes down: the host side loses its carrier.
        handle.link_down("node1", 0).unwrap();
        let expected = Verdict::Down("interface eth0: no carrier (link down)".into());
        assert_eq!(by_name.probe().await, expected);
        assert_eq!(by_address.probe().await, expected);
        handle.link_up("node1", 0).unwrap();
        assert_eq!(by_name.probe().await, Verdict::Up);

        // Brought down on the host itself.
        let ip = |state: &str| {
            let status = std::process::Command::new("ip")
                .args(["-n", &netns, "link", "set", "eth0", state])
                .status()
                .expect("running ip");
            assert!(status.success(), "ip link set eth0 {state}");
        };
        ip("down");
        assert_eq!(
            by_name.probe().await,
            Verdict::Down("interface eth0: administratively down".into())
        );
        ip("up");
        // Carrier negotiation on a veth is immediate, but bounded anyway.
        let start = Instant::now();
        while by_address.probe().await != Verdict::Up {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "eth0 did not come back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let reason = down_reason(
            interface_probe(InterfaceTarget::Name("eth9".into()))
                .probe()
                .await,
        );
        assert_eq!(reason, "interface eth9: not found");
    });
}

#[test]
fn process_scope_can_be_limited_to_the_callers_host() {
    let lab = lab(2);
    let argument = format!("3600.{}", std::process::id());
    let mut child = lab
        .command("node2", "sleep")
        .unwrap()
        .arg(&argument)
        .spawn()
        .expect("sleep on node2");
    let mut config = CheckerConfig::process("sleeper", "sleep");
    config.kind = CheckerKind::Process(ProcessChecker {
        command: "sleep".into(),
        command_regex: None,
        args_regex: Some(format!("^sleep {}$", argument.replace('.', "\\."))),
        atleast: Some(1),
        atmost: None,
    });
    let scoped = ProbeContext {
        process_scope: ProcessScope::CallerNetns,
        ..ProbeContext::default()
    };
    let verdict_on = |host: &str, context: &ProbeContext| {
        let mut verdict = None;
        on_host(lab.handle(), host, || async {
            let mut probe = AnyProbe::build(&config, context).unwrap();
            // nsenter execs sleep: give it a moment to appear (bounded).
            for _ in 0..50 {
                let v = probe.probe().await;
                verdict = Some(v.clone());
                if v.is_up() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        verdict.unwrap()
    };
    assert_eq!(verdict_on("node2", &scoped), Verdict::Up);
    assert_eq!(verdict_on("node1", &ProbeContext::default()), Verdict::Up);
    let reason = down_reason(verdict_on("node1", &scoped));
    assert!(reason.contains("0 instances running"), "{reason}");
    let _ = child.kill();
    let _ = child.wait();
}
