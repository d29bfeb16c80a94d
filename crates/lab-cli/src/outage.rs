//! `holdfast-lab bench-outage`: what a client sees when the primary's host
//! crashes — the gap between its last successful request before the crash
//! and its first one after, through the virtual IP — for Holdfast and for
//! keepalived (VRRPv3) moving a VIP with the same detection time, in the same
//! lab layout and run.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use holdfast_lab::cluster::{MirrorLab, MirrorOptions, APP_PORT, VIP};
use holdfast_lab::{wait_until, Executables, Lab, LabHandle, LabSpec};

use crate::stats::{max, median};

/// VRRPv3 with advert_int 0.1 s declares the master down after
/// 3 × 0.1 s + skew ((256 − 100) / 256 × 0.1 s) ≈ 361 ms; Holdfast gets the
/// same detection time.
const ADVERT_INT: &str = "0.1";
const DETECTION: Duration = Duration::from_millis(361);
const PULSE: Duration = Duration::from_millis(100);
/// keepalived's VIP (its own lab, so it could be the same; a distinct one reads better in logs).
const KEEPALIVED_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 60);

type Answers = Arc<Mutex<Vec<(Instant, String)>>>;

/// One request per 10 ms from the client to `vip`, until `stop` (at most a
/// minute): the time and the answering node of each success.
fn client_loop(handle: LabHandle, vip: Ipv4Addr, stop: Arc<AtomicBool>, answers: Answers) {
    let _ = handle.run_in_netns(holdfast_lab::CLIENT, move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let target = SocketAddr::from((vip, APP_PORT));
            if let Ok(stream) = TcpStream::connect_timeout(&target, Duration::from_millis(100)) {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let mut line = String::new();
                if BufReader::new(stream).read_line(&mut line).is_ok() && !line.trim().is_empty() {
                    answers
                        .lock()
                        .expect("answers")
                        .push((Instant::now(), line.trim().to_string()));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

/// Crashes `victim` while the client loops; returns the client-visible outage.
fn trial(
    handle: &LabHandle,
    vip: Ipv4Addr,
    victim: &str,
    survivor: &str,
    crash: impl FnOnce() -> Result<()>,
) -> Result<Duration> {
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Answers = Arc::default();
    let client = {
        let (handle, stop, answers) = (handle.clone(), stop.clone(), answers.clone());
        std::thread::spawn(move || client_loop(handle, vip, stop, answers))
    };
    // The client runs a while first; the crash falls at a random phase of
    // the heartbeat/advert cycle.
    std::thread::sleep(Duration::from_millis(500) + PULSE.mul_f64(rand::random::<f64>()));
    let crashed_at = Instant::now();
    crash()?;
    let served_after = || {
        answers
            .lock()
            .expect("answers")
            .iter()
            .filter(|(t, node)| *t >= crashed_at && node == survivor)
            .count()
    };
    let recovered = wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
        served_after() >= 20
    });
    stop.store(true, Ordering::SeqCst);
    client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    if !recovered {
        bail!("{survivor} did not serve 20 requests within 20 s of the crash of {victim}");
    }
    let answers = answers.lock().expect("answers");
    let before = answers
        .iter()
        .filter(|(t, _)| *t < crashed_at)
        .map(|(t, _)| *t)
        .max();
    let after = answers
        .iter()
        .find(|(t, node)| *t >= crashed_at && node == survivor)
        .map(|(t, _)| *t);
    let (Some(before), Some(after)) = (before, after) else {
        bail!("no answer before the crash of {victim}");
    };
    if answers.iter().any(|(t, node)| *t > after && node == victim) {
        bail!("{victim} answered after {survivor} took over");
    }
    Ok(after - before)
}

fn holdfast_trials(exes: &Executables, trials: usize) -> Result<Vec<f64>> {
    let options = MirrorOptions {
        pulse: PULSE,
        timeout: DETECTION,
        vip: true,
        ..MirrorOptions::default()
    };
    let mut cluster = MirrorLab::create(exes, options)?;
    cluster.start_module()?;
    let mut outages = Vec::new();
    for i in 0..trials {
        let (prim, second) = cluster.wait_pair(Duration::from_secs(30))?;
        let handle = cluster.lab.handle().clone();
        let outage = {
            let cluster_ref = &mut cluster;
            trial(&handle, VIP, prim, second, || Ok(cluster_ref.kill(prim)?))?
        };
        eprintln!(
            "  holdfast trial {}: outage {:.0} ms",
            i + 1,
            outage.as_secs_f64() * 1e3
        );
        outages.push(outage.as_secs_f64() * 1e3);
        cluster.start_daemon(prim)?;
    }
    Ok(outages)
}

fn keepalived_conf(priority: u8) -> String {
    format!(
        "global_defs {{\n  vrrp_version 3\n  script_user root\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int {ADVERT_INT}\n  virtual_ipaddress {{\n    {KEEPALIVED_VIP}/24\n  }}\n}}\n"
    )
}

/// Starts keepalived and the sample application on `host` of the lab.
fn keepalived_host(lab_tool: &Path, lab: &Lab, host: &str, priority: u8) -> Result<()> {
    let srv = lab.host_dir(host)?.join("srv/ka");
    std::fs::create_dir_all(&srv)?;
    std::fs::write(srv.join("keepalived.conf"), keepalived_conf(priority))?;
    // A crashed host reboots with an empty /run; its old pid files would
    // make keepalived believe it still runs.
    for pid in ["keepalived.pid", "vrrp.pid", "checkers.pid"] {
        let _ = std::fs::remove_file(srv.join(pid));
    }
    let log = std::fs::File::create(srv.join("keepalived.log"))?;
    lab.command(host, "keepalived")?
        .args(["-n", "-l", "-P", "-f", "/srv/ka/keepalived.conf"])
        .args([
            "-p",
            "/srv/ka/keepalived.pid",
            "-r",
            "/srv/ka/vrrp.pid",
            "-c",
            "/srv/ka/checkers.pid",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting keepalived (apt-get install keepalived)")?;
    lab.command(host, lab_tool)?
        .args([
            "sample-app",
            "--dir",
            "/srv/ka",
            "--node",
            host,
            "--port",
            &APP_PORT.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(())
}

/// Which node holds keepalived's VIP, seen from the client.
fn serving(handle: &LabHandle) -> Option<String> {
    handle
        .run_in_netns(holdfast_lab::CLIENT, || {
            let stream = TcpStream::connect_timeout(
                &SocketAddr::from((KEEPALIVED_VIP, APP_PORT)),
                Duration::from_millis(200),
            )
            .ok()?;
            stream
                .set_read_timeout(Some(Duration::from_millis(300)))
                .ok()?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).ok()?;
            Some(line.trim().to_string())
        })
        .ok()
        .flatten()
}

fn keepalived_trials(lab_tool: &Path, trials: usize) -> Result<Vec<f64>> {
    let lab = Lab::create(LabSpec {
        hosts: 2,
        networks: 1,
        client: true,
    })?;
    keepalived_host(lab_tool, &lab, "node1", 150)?;
    keepalived_host(lab_tool, &lab, "node2", 100)?;
    let handle = lab.handle().clone();
    let mut outages = Vec::new();
    for i in 0..trials {
        let mut master = None;
        wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            master = serving(&handle);
            master.is_some()
        });
        let Some(master) = master else {
            bail!("keepalived's VIP is not served")
        };
        let backup = if master == "node1" { "node2" } else { "node1" };
        // Both instances up again before the crash: wait a few adverts.
        std::thread::sleep(Duration::from_millis(500));
        let outage = trial(&handle, KEEPALIVED_VIP, &master, backup, || {
            Ok(handle.kill_host(&master)?)
        })
        .map_err(|e| {
            let log = |h: &str| {
                let path = lab
                    .host_dir(h)
                    .map(|d| d.join("srv/ka/keepalived.log"))
                    .unwrap_or_default();
                std::fs::read_to_string(path).unwrap_or_default()
            };
            e.context(format!(
                "keepalived logs:\nnode1:\n{}\nnode2:\n{}",
                log("node1"),
                log("node2")
            ))
        })?;
        eprintln!(
            "  keepalived trial {}: outage {:.0} ms",
            i + 1,
            outage.as_secs_f64() * 1e3
        );
        outages.push(outage.as_secs_f64() * 1e3);
        // The crashed host comes back as BACKUP (nopreempt); its VIP, left in
        // the kernel by the kill, is removed as a real crash would.
        let _ = handle
            .command(&master, "ip")?
            .args([
                "addr",
                "del",
                &format!("{KEEPALIVED_VIP}/24"),
                "dev",
                "eth0",
            ])
            .status();
        keepalived_host(
            lab_tool,
            &lab,
            &master,
            if master == "node1" { 150 } else { 100 },
        )?;
    }
    Ok(outages)
}

pub fn bench(exes: &Executables, trials: usize) -> Result<()> {
    eprintln!("holdfast: pulse {PULSE:?}, timeout {DETECTION:?}, {trials} crashes of the primary");
    let holdfast = holdfast_trials(exes, trials)?;
    eprintln!("keepalived: VRRPv3 advert_int {ADVERT_INT} s (master down after ~{DETECTION:?}), {trials} crashes of the master");
    let keepalived = keepalived_trials(&exes.lab, trials)?;
    let (h, k) = (median(&holdfast), median(&keepalived));
    println!("\nClient-visible outage on a crash of the primary host: last successful request before the crash");
    println!("to first successful one after (a TCP request every 10 ms from the client host to the VIP).\n");
    println!("| system | detection | trials | median outage | max outage | ratio to keepalived |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| Holdfast | timeout {} ms, pulse {} ms | {} | {h:.0} ms | {:.0} ms | {:.2} |",
        DETECTION.as_millis(),
        PULSE.as_millis(),
        holdfast.len(),
        max(&holdfast),
        h / k
    );
    println!("| keepalived 2.2 (VRRPv3) | advert_int {ADVERT_INT} s | {} | {k:.0} ms | {:.0} ms | 1.00 |", keepalived.len(), max(&keepalived));
    println!(
        "\nHoldfast minus keepalived (median): {:+.0} ms (target: at most +100 ms)",
        h - k
    );
    Ok(())
}
