//! `holdfast-lab bench-failover`: failover time over repeated crashes of
//! the primary's host, and false failovers under CPU load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use holdfast_lab::cluster::{MirrorLab, MirrorOptions};
use holdfast_lab::Executables;

use crate::stats::{max, median};

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
    exes: &Executables,
    pulse: Duration,
    timeout: Duration,
    trials: usize,
) -> Result<(Trials, MirrorLab)> {
    let options = MirrorOptions {
        pulse,
        timeout,
        ..MirrorOptions::default()
    };
    let mut cluster = MirrorLab::create(exes, options)?;
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

pub fn bench(
    exes: &Executables,
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
        let (result, cluster) = measure(exes, pulse, timeout, trials)?;
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
