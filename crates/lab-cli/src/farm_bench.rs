//! `holdfast-lab bench-farm`: HTTP requests per second through a farm
//! module's virtual IP with 1, 2 and 3 UP nodes, beside the same nginx
//! reached directly on one node and HAProxy balancing the same nodes, all in
//! one lab and run (rounds interleaved, so a noisy neighbour hits every
//! configuration alike). With fewer nodes UP than hosts, the farm is
//! measured twice: the other hosts off the network (machines that are down)
//! and up but stopped (frames to the virtual MAC still reach them, and here
//! they spend the same two CPUs on them).

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use holdfast_lab::cluster::{settled, FarmOptions, MirrorLab, MirrorOptions, VIP};
use holdfast_lab::{wait_until, Executables, CLIENT};

use crate::stats::median;

/// How to run the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Length of each wrk run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Rounds over every configuration; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Concurrent HTTP connections (keep-alive) of wrk.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
}

const MODULE: &str = "web";
const NODES: usize = 3;
const HTTP_PORT: u16 = 80;
/// HAProxy on the client host: port 8000 + n balances node1..node<n>.
const HAPROXY_BASE_PORT: u16 = 8000;

const NGINX_CONF: &str = "worker_processes auto;
pid /srv/nginx/nginx.pid;
error_log /srv/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  server {
    listen 80 reuseport;
    location / { return 200 \"ok\\n\"; }
  }
}
";

pub fn bench(exes: &Executables, settings: &Settings) -> Result<()> {
    let rules = format!(
        "\n[[load_balancing]]\nprotocol = \"tcp\"\nport = {HTTP_PORT}\nby = \"client_ip_port\"\n"
    );
    let cluster = MirrorLab::create(
        exes,
        MirrorOptions {
            module: MODULE.into(),
            // Loaded to saturation, this lab's two CPUs can delay or drop
            // heartbeats; a node taken for lost would have its peers take
            // its buckets while it still serves them, resetting clients.
            // Failure detection is not what is measured here.
            pulse: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
            vip: true,
            farm: Some(FarmOptions {
                powers: vec![1; NODES],
                rules,
            }),
            ..MirrorOptions::default()
        },
    )?;
    let nodes = cluster.lab.nodes();
    for host in &nodes {
        start_nginx(&cluster, host)?;
    }
    let addresses: Vec<Ipv4Addr> = nodes
        .iter()
        .map(|h| cluster.lab.address(h, 0))
        .collect::<holdfast_lab::Result<_>>()?;
    start_haproxy(&cluster, &addresses)?;
    let client = cluster.lab.address(CLIENT, 0)?;
    let direct_url = format!("http://{}:{HTTP_PORT}/", addresses[0]);
    for url in [direct_url.clone()]
        .into_iter()
        .chain((1..=NODES).map(|n| haproxy_url(client, n)))
    {
        let mut last = None;
        let up = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            let run = wrk(&cluster, &url, 1, 1);
            let ok = run
                .as_ref()
                .is_ok_and(|r| r.errors == 0 && r.requests_per_s > 0.0);
            last = Some(run);
            ok
        });
        if !up {
            let last = match last {
                Some(Ok(run)) => format!("{:.0} req/s, {} errors", run.requests_per_s, run.errors),
                Some(Err(e)) => e.to_string(),
                None => "not tried".into(),
            };
            let haproxy = cluster
                .lab
                .host_dir(CLIENT)?
                .join("srv/haproxy/haproxy.log");
            let haproxy = std::fs::read_to_string(haproxy).unwrap_or_default();
            bail!("{url} does not answer from the client host ({last}); haproxy: {haproxy}");
        }
    }

    let mut direct = Vec::new();
    let mut farm = vec![Vec::new(); NODES];
    let mut farm_flooded = vec![Vec::new(); NODES];
    let mut haproxy = vec![Vec::new(); NODES];
    let mut errors = 0;
    let vip_url = format!("http://{VIP}:{HTTP_PORT}/");
    let mut measure = |what: &str, url: &str, into: &mut Vec<f64>| -> Result<()> {
        let run = wrk(&cluster, url, settings.seconds, settings.connections)?;
        eprintln!(
            "{what} {url}: {:.0} req/s, {} errors",
            run.requests_per_s, run.errors
        );
        errors += run.errors;
        into.push(run.requests_per_s);
        Ok(())
    };
    for round in 1..=settings.rounds {
        for n in 1..=NODES {
            farm_of(&cluster, &nodes, n)?;
            let label = |what: &str| format!("round {round}, {n} node(s): {what}");
            measure(&label("direct"), &direct_url, &mut direct)?;
            measure(
                &label("haproxy"),
                &haproxy_url(client, n),
                &mut haproxy[n - 1],
            )?;
            if n < NODES {
                // The other hosts up but stopped: frames to the virtual MAC
                // still reach them, and they spend the shared CPUs on them.
                measure(
                    &label("farm, other hosts up"),
                    &vip_url,
                    &mut farm_flooded[n - 1],
                )?;
            }
            // The other hosts off the network, as machines that are down.
            for host in &nodes[n..] {
                cluster.lab.link_down(host, 0)?;
            }
            measure(&label("farm"), &vip_url, &mut farm[n - 1])?;
            for host in &nodes[n..] {
                cluster.lab.link_up(host, 0)?;
            }
        }
    }

    let base = median(&direct);
    println!(
        "\nHTTP requests/s (wrk, {} keep-alive connections, {} s per run, median of {} rounds; nginx answering a 3-byte body).\n",
        settings.connections, settings.seconds, settings.rounds
    );
    println!("| UP nodes | direct to one node | farm VIP | farm / direct | farm VIP, other hosts up | ratio | HAProxy | HAProxy / direct |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in 1..=NODES {
        let (f, h) = (median(&farm[n - 1]), median(&haproxy[n - 1]));
        let flooded = if n < NODES {
            let ff = median(&farm_flooded[n - 1]);
            format!("{ff:.0} | {:.2}", ff / base)
        } else {
            "— | —".to_string()
        };
        println!(
            "| {n} | {base:.0} | {f:.0} | {:.2} | {flooded} | {h:.0} | {:.2} |",
            f / base,
            h / base
        );
    }
    println!("\nErrors (socket errors and non-2xx answers, every run): {errors}.");
    Ok(())
}

fn haproxy_url(client: Ipv4Addr, nodes: usize) -> String {
    format!("http://{client}:{}/", HAPROXY_BASE_PORT + nodes as u16)
}

fn start_nginx(cluster: &MirrorLab, host: &str) -> Result<()> {
    let dir = cluster.lab.host_dir(host)?.join("srv/nginx");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("nginx.conf"), NGINX_CONF)?;
    cluster
        .lab
        .command(host, "nginx")?
        .args(["-c", "/srv/nginx/nginx.conf", "-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt-get install nginx-light)")?;
    Ok(())
}

/// One HAProxy on the client host with a frontend per number of nodes.
fn start_haproxy(cluster: &MirrorLab, nodes: &[Ipv4Addr]) -> Result<()> {
    let client = cluster.lab.address(CLIENT, 0)?;
    let mut conf = String::from(
        "global\n  maxconn 4096\n  pidfile /srv/haproxy/haproxy.pid\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n",
    );
    for n in 1..=nodes.len() {
        conf.push_str(&format!(
            "frontend f{n}\n  bind {client}:{}\n  default_backend b{n}\nbackend b{n}\n  balance roundrobin\n",
            HAPROXY_BASE_PORT + n as u16
        ));
        for (i, address) in nodes[..n].iter().enumerate() {
            conf.push_str(&format!("  server node{} {address}:{HTTP_PORT}\n", i + 1));
        }
    }
    let dir = cluster.lab.host_dir(CLIENT)?.join("srv/haproxy");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("haproxy.cfg"), conf)?;
    let log = std::fs::File::create(dir.join("haproxy.log"))?;
    cluster
        .lab
        .command(CLIENT, "haproxy")?
        .args(["-db", "-f", "/srv/haproxy/haproxy.cfg"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting haproxy (apt-get install haproxy)")?;
    Ok(())
}

/// A farm of node1..node<n> started together (the others STOP): stops
/// every node, starts the first `n` and waits until they share the 256
/// buckets. Started together, each node only ever owned its own buckets.
fn farm_of(cluster: &MirrorLab, nodes: &[String], n: usize) -> Result<()> {
    for (host, state) in nodes.iter().zip(cluster.states()) {
        if state.is_some_and(|s| s.state != "STOP") {
            cluster.run_cli_checked(host, &["stop", "-m", MODULE])?;
        }
    }
    cluster.wait_all(Duration::from_secs(30), |states| {
        states.iter().all(|s| settled(s, "STOP"))
    })?;
    for host in &nodes[..n] {
        cluster.run_cli_checked(host, &["start", "-m", MODULE])?;
    }
    cluster.wait_all(Duration::from_secs(30), |states| {
        let shares: Vec<usize> = states
            .iter()
            .take(n)
            .filter(|s| settled(s, "UP"))
            .filter_map(|s| s.as_ref()?.farm.as_ref().map(|f| f.buckets))
            .collect();
        shares.len() == n
            && shares.iter().sum::<usize>() == 256
            && shares.iter().all(|&b| b > 0)
            && states[n..].iter().all(|s| settled(s, "STOP"))
    })?;
    Ok(())
}

struct WrkRun {
    requests_per_s: f64,
    errors: u64,
}

/// Runs wrk on the client host against `url`.
fn wrk(cluster: &MirrorLab, url: &str, seconds: u64, connections: usize) -> Result<WrkRun> {
    let out = cluster
        .lab
        .command(CLIENT, "wrk")?
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "2s",
            url,
        ])
        .stdin(Stdio::null())
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk {url} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |line: &str, name: &str| -> u64 {
        line.split(name)
            .nth(1)
            .and_then(|rest| rest.split([',', ' ']).find(|w| !w.is_empty()))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut run = WrkRun {
        requests_per_s: 0.0,
        errors: 0,
    };
    for line in text.lines() {
        let line = line.trim();
        if let Some(rate) = line.strip_prefix("Requests/sec:") {
            run.requests_per_s = rate.trim().parse().unwrap_or(0.0);
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += count.trim().parse::<u64>().unwrap_or(0);
        } else if line.starts_with("Socket errors:") {
            run.errors += ["connect ", "read ", "write ", "timeout "]
                .iter()
                .map(|name| field(line, name))
                .sum::<u64>();
        }
    }
    Ok(run)
}
