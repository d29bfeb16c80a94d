//! `holdfast-lab`: test hosts on this machine (network and mount
//! namespaces) running the product's `holdfast`, for the demo, fault
//! injection by hand, the benchmarks, and the applications the end-to-end
//! tests start on the hosts. Kept out of the shipped `holdfast`: `kill -9`,
//! partitions and benchmark harnesses are no product commands.

mod demo;
mod failover;
mod farm_bench;
mod outage;
mod replication_bench;
mod sample_app;
mod stats;

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use holdfast_lab::{attach, clean_stale, list_labs, Executables, LabHandle};

#[derive(Parser, Debug)]
#[command(
    name = "holdfast-lab",
    version,
    about = "Test hosts on this machine running holdfast: demo, faults, benchmarks"
)]
struct Cli {
    /// The product's executable the hosts run (default: `holdfast` beside
    /// this executable).
    #[arg(long, global = true)]
    holdfast: Option<PathBuf>,
    #[command(subcommand)]
    command: LabCmd,
}

#[derive(Subcommand, Debug)]
enum LabCmd {
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
    /// Run a command on a lab host, e.g. `holdfast-lab exec node1 -- holdfast state`.
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
    /// `synced <writer> <record>` for each durable one; with `--mixed`,
    /// each record also goes to <dir>/stream-<n>, never synced
    /// (`streamed ...`), and every 8 records a whole file is written and
    /// closed without fsync (`closed <writer> <file>`). Runs until killed.
    #[command(hide = true)]
    AppendRecords {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1)]
        writers: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long)]
        mixed: bool,
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
        settings: farm_bench::Settings,
    },
    /// Benchmark: what synchronous replication costs (throughput, fsync
    /// latency, metadata rate, pgbench) beside a local directory and the
    /// FUSE floor, and resynchronisation beside rsync.
    BenchReplication {
        #[command(flatten)]
        settings: replication_bench::Settings,
    },
    /// One workload of bench-replication, run inside a lab host.
    #[command(hide = true)]
    BenchIo {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, value_enum)]
        workload: replication_bench::Workload,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("holdfast-lab: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Only the commands that run `holdfast` on the hosts look for it: the
    // applications started there, and `list` or `clean`, do without.
    let exes = || -> Result<Executables> {
        let lab = std::env::current_exe().context("locating the holdfast-lab executable")?;
        Ok(Executables::for_lab_tool(lab, cli.holdfast.clone())?)
    };
    match cli.command {
        LabCmd::Demo { seconds } => demo::run(&exes()?, seconds)?,
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
            // `holdfast` means the product beside this executable, installed or not.
            let program: std::ffi::OsString = if command[0] == holdfast_lab::HOLDFAST {
                exes()?.holdfast.into()
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
            let exes = exes()?;
            let log = handle.host_dir(&host)?.join("daemon.log");
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            handle
                .command(&host, &exes.holdfast)?
                .args(["daemon", "--node", &host])
                .env("PATH", exes.search_path())
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()?;
            println!("{host}: daemon started (log {})", log.display());
        }
        LabCmd::State { lab } => {
            let handle = find(lab)?;
            let holdfast = exes()?.holdfast;
            for host in handle.nodes() {
                handle.command(&host, &holdfast)?.arg("state").status()?;
            }
        }
        LabCmd::SampleApp {
            dir,
            node,
            port,
            echo_port,
        } => sample_app::run(&dir, &node, port, echo_port)?,
        LabCmd::AppendRecords {
            dir,
            writers,
            size,
            mixed,
        } => {
            use holdfast_lab::records::{append, Workload};
            let workload = if mixed {
                Workload::Mixed
            } else {
                Workload::Synced
            };
            append(&dir, writers, size, workload)?
        }
        LabCmd::BenchOutage { trials } => outage::bench(&exes()?, trials)?,
        LabCmd::BenchFarm { settings } => farm_bench::bench(&exes()?, &settings)?,
        LabCmd::BenchReplication { settings } => replication_bench::bench(&exes()?, &settings)?,
        LabCmd::BenchIo {
            dir,
            workload,
            mib,
            seconds,
            seed,
        } => replication_bench::run_io(&dir, workload, mib, seconds, seed)?,
        LabCmd::BenchMount { dir, replicate_to } => {
            replication_bench::run_floor_mount(&dir, replicate_to.as_deref())?
        }
        LabCmd::BenchFailover {
            trials,
            load_seconds,
            skip_default,
        } => failover::bench(&exes()?, trials, load_seconds, skip_default)?,
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
        [] => bail!("no lab is running (start one with `holdfast-lab demo`)"),
        _ => bail!(
            "several labs are running ({}): name one with --lab",
            labs.iter()
                .map(|l| l.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
