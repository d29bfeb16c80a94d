//! `holdfast lab ...`: test hosts on this machine (network and mount
//! namespaces), for the demo, fault injection by hand, and benchmarks.

use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use holdfast_lab::cluster::{MirrorLab, MirrorOptions};
use holdfast_lab::{attach, clean_stale, list_labs, LabHandle};

#[derive(Subcommand, Debug)]
pub enum LabCmd {
    /// Start a 2-node demo cluster running a sample application; Ctrl-C removes it.
    Demo {
        /// Stop by itself after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Running labs.
    List,
    /// Remove labs whose owner died (or all labs with --all).
    Clean {
        #[arg(long)]
        all: bool,
    },
    /// Run a command on a lab host, e.g. `holdfast lab exec node1 -- holdfast state`.
    Exec {
        #[arg(long)]
        lab: Option<String>,
        host: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// `kill -9` everything on a host (daemon and application): a server crash.
    Kill {
        #[arg(long)]
        lab: Option<String>,
        host: String,
    },
    /// Cut a host's link on a heartbeat network (0-based), or bring it back.
    Link {
        #[arg(long)]
        lab: Option<String>,
        host: String,
        #[arg(value_parser = ["up", "down"])]
        state: String,
        #[arg(long, default_value_t = 0)]
        network: usize,
    },
    /// Drop all traffic between two hosts (nftables in the lab's switch).
    Partition {
        #[arg(long)]
        lab: Option<String>,
        a: String,
        b: String,
    },
    /// Undo `partition`.
    Heal {
        #[arg(long)]
        lab: Option<String>,
        a: String,
        b: String,
    },
    /// Drop this percentage of a host's packets at random (0 clears).
    Loss {
        #[arg(long)]
        lab: Option<String>,
        host: String,
        percent: u8,
    },
    /// Start the daemon again on a host after `kill`.
    StartDaemon {
        #[arg(long)]
        lab: Option<String>,
        host: String,
    },
    /// `holdfast state` on every node of a lab.
    State {
        #[arg(long)]
        lab: Option<String>,
    },
    /// The demo's sample application (run by its start_prim script): a line
    /// per second in <dir>/app.log, and TCP connections on --port answered
    /// with the node's name. With --echo-port, connections there get the
    /// node's name then every line they send back, until they close (the
    /// farm's held-open connections). Runs until killed.
    #[command(hide = true)]
    SampleApp {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        echo_port: Option<u16>,
    },
    /// The application of the lost-write tests: `writers` threads append
    /// fixed-size records with fsync to <dir>/records-<n>, printing
    /// `<writer> <record>` for each acknowledged one. Runs until killed.
    #[command(hide = true)]
    AppendRecords {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1)]
        writers: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Benchmark: client-visible outage through the virtual IP when the
    /// primary crashes, beside keepalived (VRRPv3) at the same detection time.
    BenchOutage {
        #[arg(long, default_value_t = 10)]
        trials: usize,
    },
    /// Benchmark: HTTP requests/s through a farm's virtual IP with 1, 2 and
    /// 3 nodes, beside nginx reached directly and HAProxy balancing the same
    /// nodes.
    BenchFarm {
        #[command(flatten)]
        settings: crate::farm_bench::Settings,
    },
    /// Benchmark: what synchronous replication costs (throughput, fsync
    /// latency, metadata rate, pgbench) beside a local directory and the
    /// FUSE floor, and resynchronisation beside rsync.
    BenchReplication {
        #[command(flatten)]
        settings: crate::replication_bench::Settings,
    },
    /// One workload of bench-replication, run inside a lab host.
    #[command(hide = true)]
    BenchIo {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, value_enum)]
        workload: crate::replication_bench::Workload,
        #[arg(long, default_value_t = 0)]
        mib: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Holdfast's file system over --dir with replication off (the FUSE
    /// floor of bench-replication), until standard input closes.
    #[command(hide = true)]
    BenchMount {
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Replicates instead to a receiver of this directory, in the same
        /// process over loopback (acknowledged on receipt): for measuring
        /// the replication path by hand without lab hosts.
        #[arg(long)]
        replicate_to: Option<std::path::PathBuf>,
    },
    /// Benchmark: failover time over repeated primary crashes.
    BenchFailover {
        /// Crashes per timing setting.
        #[arg(long, default_value_t = 10)]
        trials: usize,
        /// Length of the false-failover check under CPU load (seconds).
        #[arg(long, default_value_t = 60)]
        load_seconds: u64,
        /// Skip the default (700 ms / 30 s) timing, which takes ~40 s a trial.
        #[arg(long)]
        skip_default: bool,
    },
}

pub fn run(cmd: LabCmd) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the holdfast executable")?;
    match cmd {
        LabCmd::Demo { seconds } => demo(&exe, seconds)?,
        LabCmd::List => {
            for info in list_labs() {
                let hosts: Vec<&str> = info.hosts.iter().map(|h| h.name.as_str()).collect();
                println!(
                    "{}\towner pid {}\thosts {}",
                    info.id,
                    info.owner_pid,
                    hosts.join(",")
                );
            }
        }
        LabCmd::Clean { all } => {
            for removed in clean_stale(all)? {
                println!("removed lab {removed}");
            }
        }
        LabCmd::Exec { lab, host, command } => {
            let handle = find(lab)?;
            // `holdfast` means this executable, installed or not.
            let program: std::ffi::OsString = if command[0] == "holdfast" {
                exe.clone().into()
            } else {
                command[0].clone().into()
            };
            let status = handle
                .command(&host, program)?
                .args(&command[1..])
                .status()?;
            return Ok(ExitCode::from(status.code().unwrap_or(1) as u8));
        }
        LabCmd::Kill { lab, host } => {
            find(lab)?.kill_host(&host)?;
            println!("{host}: every process killed (daemon and application)");
        }
        LabCmd::Link {
            lab,
            host,
            state,
            network,
        } => {
            let handle = find(lab)?;
            if state == "down" {
                handle.link_down(&host, network)?;
            } else {
                handle.link_up(&host, network)?;
            }
            println!("{host}: link on network {network} {state}");
        }
        LabCmd::Partition { lab, a, b } => {
            find(lab)?.partition(&a, &b)?;
            println!("{a} and {b} partitioned");
        }
        LabCmd::Heal { lab, a, b } => {
            find(lab)?.heal(&a, &b)?;
            println!("{a} and {b} reconnected");
        }
        LabCmd::Loss { lab, host, percent } => {
            let handle = find(lab)?;
            if percent == 0 {
                handle.clear_loss(&host)?;
            } else {
                handle.set_loss(&host, percent)?;
            }
            println!("{host}: {percent}% packet loss");
        }
        LabCmd::StartDaemon { lab, host } => {
            let handle = find(lab)?;
            let log = handle.host_dir(&host)?.join("daemon.log");
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            handle
                .command(&host, &exe)?
                .args(["daemon", "--node", &host])
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()?;
            println!("{host}: daemon started (log {})", log.display());
        }
        LabCmd::State { lab } => {
            let handle = find(lab)?;
            for host in handle.nodes() {
                handle.command(&host, &exe)?.arg("state").status()?;
            }
        }
        LabCmd::SampleApp {
            dir,
            node,
            port,
            echo_port,
        } => sample_app(&dir, &node, port, echo_port)?,
        LabCmd::AppendRecords { dir, writers, size } => crate::records::run(&dir, writers, size)?,
        LabCmd::BenchOutage { trials } => crate::outage::bench(&exe, trials)?,
        LabCmd::BenchFarm { settings } => crate::farm_bench::bench(&exe, &settings)?,
        LabCmd::BenchReplication { settings } => crate::replication_bench::bench(&exe, &settings)?,
        LabCmd::BenchIo {
            dir,
            workload,
            mib,
            seconds,
            seed,
        } => crate::replication_bench::run_io(&dir, workload, mib, seconds, seed)?,
        LabCmd::BenchMount { dir, replicate_to } => {
            crate::replication_bench::run_floor_mount(&dir, replicate_to.as_deref())?
        }
        LabCmd::BenchFailover {
            trials,
            load_seconds,
            skip_default,
        } => bench_failover(&exe, trials, load_seconds, skip_default)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The lab named, or the only one running.
fn find(id: Option<String>) -> Result<LabHandle> {
    if let Some(id) = id {
        return Ok(attach(&id)?);
    }
    let labs = list_labs();
    match labs.as_slice() {
        [one] => Ok(attach(&one.id)?),
        [] => bail!("no lab is running (start one with `holdfast lab demo`)"),
        _ => bail!(
            "several labs are running ({}): name one with --lab",
            labs.iter()
                .map(|l| l.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn interrupted() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        set.store(true, Ordering::SeqCst);
    });
    Ok(flag)
}

fn demo(exe: &std::path::Path, seconds: Option<u64>) -> Result<()> {
    let stop = interrupted()?;
    println!("building the lab: 2 nodes and a client in network namespaces...");
    let options = MirrorOptions {
        pulse: Duration::from_millis(200),
        timeout: Duration::from_secs(3),
        vip: true,
        tail: "\n[replication]\nport = 4900\n\n[[replicated]]\ndir = \"/srv/demo/data\"\n".into(),
        ..MirrorOptions::default()
    };
    let cluster = MirrorLab::create(exe, options)?;
    cluster.start_module()?;
    let id = cluster.lab.id().to_string();
    println!(
        "\nlab {id} is running module `demo` on node1 and node2 (heartbeat 200 ms, timeout 3 s).\n\
         The sample application runs on the primary: it appends a line per second to /srv/demo/app.log\n\
         and answers TCP port 8080 on the virtual IP {vip} with the name of the node serving.\n\
         /srv/demo/data is replicated synchronously from the primary to the secondary.\n\n\
         In another terminal, as root:\n\
         \x20 holdfast lab state                          # state of both nodes\n\
         \x20 holdfast lab kill node1                     # crash node1: node2 takes over in ~3 s\n\
         \x20 holdfast lab start-daemon node1             # node1 comes back as SECOND\n\
         \x20 holdfast lab partition node1 node2          # split brain without a witness; `heal` ends it\n\
         \x20 holdfast lab exec node1 -- tail -3 /srv/demo/app.log\n\
         \x20 holdfast lab exec node1 -- sh -c 'date > /srv/demo/data/f'   # replicated (on the primary)\n\
         \x20 holdfast lab exec node2 -- cat /srv/demo/data/f              # read-only on the secondary\n\
         \x20 holdfast lab exec client -- bash -c 'cat < /dev/tcp/{vip}/8080'\n\
         \x20 holdfast lab exec node1 -- holdfast swap -m demo\n\
         \x20 holdfast lab exec node2 -- holdfast log -m demo\n\n\
         Ctrl-C here removes the lab.\n",
        vip = holdfast_lab::cluster::VIP
    );
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    // Bounded by Ctrl-C, --seconds, or a day at most.
    for _ in 0..86_400 {
        if stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let line: Vec<String> = ["node1", "node2"]
            .iter()
            .map(|h| match cluster.state(h) {
                Some(s) => format!("{h}: {:<6} ({})", s.state, s.reason),
                None => format!("{h}: daemon down"),
            })
            .collect();
        let running: Vec<&str> = ["node1", "node2"]
            .into_iter()
            .filter(|h| cluster.app_pid(h).is_some())
            .collect();
        println!(
            "{}   application on: {}",
            line.join("   "),
            running.join(", ")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("removing lab {id}...");
    Ok(())
}

fn sample_app(dir: &std::path::Path, node: &str, port: u16, echo_port: Option<u16>) -> Result<()> {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("sample application: port {port}"))?;
    if let Some(echo_port) = echo_port {
        let echo = std::net::TcpListener::bind(("0.0.0.0", echo_port))
            .with_context(|| format!("sample application: port {echo_port}"))?;
        let name = node.to_string();
        std::thread::spawn(move || {
            for stream in echo.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || -> std::io::Result<()> {
                    let mut writer = stream.try_clone()?;
                    writeln!(writer, "{name}")?;
                    for line in std::io::BufReader::new(stream).lines() {
                        writeln!(writer, "{}", line?)?;
                    }
                    Ok(())
                });
            }
        });
    }
    let log_path = dir.join("app.log");
    let name = node.to_string();
    std::thread::spawn(move || loop {
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
        {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let _ = writeln!(
                log,
                "{:02}:{:02}:{:02} served by {name}",
                secs / 3600 % 24,
                secs / 60 % 60,
                secs % 60
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    });
    for stream in listener.incoming() {
        match stream {
            // A client that went away is its own business.
            Ok(mut stream) => {
                let _ = writeln!(stream, "{node}");
            }
            // Out of descriptors or the like: do not spin on it.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    Ok(())
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

struct Trials {
    takeover_ms: Vec<f64>,
}

/// Crashes the primary `trials` times; each time measures from the crash to
/// the survivor's start_prim, then restarts the crashed node as SECOND.
fn measure(
    exe: &std::path::Path,
    pulse: Duration,
    timeout: Duration,
    trials: usize,
) -> Result<(Trials, MirrorLab)> {
    let options = MirrorOptions {
        pulse,
        timeout,
        ..MirrorOptions::default()
    };
    let mut cluster = MirrorLab::create(exe, options)?;
    cluster.start_module()?;
    let settle = timeout * 3 + Duration::from_secs(20);
    let mut takeover_ms = Vec::new();
    for trial in 0..trials {
        let (prim, survivor) = cluster.wait_pair(settle)?;
        // The pair settles right after a status change, which sends a
        // heartbeat at once: crash at a random phase of the pulse instead,
        // as a real crash would.
        std::thread::sleep(pulse + pulse.mul_f64(rand::random::<f64>()));
        let before = cluster.events(survivor).len();
        let crash = unix_ns();
        cluster.kill(prim)?;
        let mut started = None;
        holdfast_lab::wait_until(settle, Duration::from_millis(5), || {
            started = cluster
                .events(survivor)
                .iter()
                .skip(before)
                .find(|(_, script, _)| script == "start_prim")
                .map(|(t, _, _)| *t);
            started.is_some()
        });
        let Some(started) = started else {
            bail!("trial {trial}: {survivor} did not run start_prim within {settle:?}");
        };
        takeover_ms.push(started.saturating_sub(crash) as f64 / 1e6);
        cluster.start_daemon(prim)?;
        eprintln!(
            "  trial {}: takeover {:.0} ms",
            trial + 1,
            takeover_ms.last().copied().unwrap_or(0.0)
        );
    }
    Ok((Trials { takeover_ms }, cluster))
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(crate) fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// Counts takeovers in both nodes' module logs.
fn takeovers(cluster: &MirrorLab) -> usize {
    ["node1", "node2"]
        .iter()
        .filter_map(|h| cluster.lab.host_dir(h).ok())
        .map(|d| {
            let log = d.join("var-lib-holdfast/modules/demo/module.log");
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .matches("becoming primary")
                .count()
        })
        .sum()
}

fn bench_failover(
    exe: &std::path::Path,
    trials: usize,
    load_seconds: u64,
    skip_default: bool,
) -> Result<()> {
    let mut settings = vec![(
        "aggressive",
        Duration::from_millis(100),
        Duration::from_millis(500),
    )];
    if !skip_default {
        settings.insert(
            0,
            (
                "default",
                Duration::from_millis(700),
                Duration::from_secs(30),
            ),
        );
    }
    let mut rows = Vec::new();
    let mut false_failovers = None;
    for (name, pulse, timeout) in settings {
        eprintln!("{name}: pulse {pulse:?}, timeout {timeout:?}, {trials} crashes of the primary");
        let (result, cluster) = measure(exe, pulse, timeout, trials)?;
        let timeout_ms = timeout.as_secs_f64() * 1e3;
        let beyond: Vec<f64> = result.takeover_ms.iter().map(|t| t - timeout_ms).collect();
        rows.push(format!(
            "| {name} | {} ms | {} ms | {} | {:.0} ms | {:.0} ms | {:+.0} ms | {:+.0} ms | {:.3} |",
            pulse.as_millis(),
            timeout.as_millis(),
            result.takeover_ms.len(),
            median(&result.takeover_ms),
            max(&result.takeover_ms),
            median(&beyond),
            max(&beyond),
            median(&result.takeover_ms) / timeout_ms,
        ));
        if name == "aggressive" && load_seconds > 0 {
            false_failovers = Some(load_check(&cluster, load_seconds, timeout)?);
        }
    }
    println!("\nFailover: time from kill -9 of the primary host to start_prim beginning on the survivor.");
    println!("Baseline: the configured heartbeat timeout (the detection floor); ratio = median takeover / timeout.\n");
    println!("| setting | pulse | timeout | trials | median takeover | max takeover | median beyond timeout | max beyond timeout | ratio to timeout |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    if let Some((seconds, count)) = false_failovers {
        println!("\nFalse failovers at the aggressive setting, {seconds} s with both cores busy: {count}");
    }
    Ok(())
}

/// Runs the cluster with every core spinning, and counts takeovers.
fn load_check(cluster: &MirrorLab, seconds: u64, timeout: Duration) -> Result<(u64, usize)> {
    cluster.wait_pair(timeout * 3 + Duration::from_secs(20))?;
    let before = takeovers(cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners: Vec<_> = (0..cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    eprintln!("load check: {seconds} s with {cores} busy threads");
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    Ok((seconds, takeovers(cluster) - before))
}
