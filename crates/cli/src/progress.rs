//! `holdfast progress -m M`: a live progress bar per replicated directory
//! while the primary resynchronises its secondary, until every directory
//! mirrors (or receives, on a secondary). Without a terminal, a text line
//! every 2 s instead.

use std::time::Duration;

use anyhow::Result;
use holdfast_daemon::registry::ModuleSummary;
use holdfast_daemon::replication::status::{Activity, DirStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

const POLL: Duration = Duration::from_millis(250);
/// Without a terminal (no bars drawn): a text line per directory this often, in polls.
const PLAIN_EVERY: u32 = 8;

/// Polls `get` until no directory is resynchronising or waiting for its
/// secondary; each line says where a directory stands.
pub fn follow(mut get: impl FnMut() -> Result<ModuleSummary>) -> Result<()> {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    )
    .expect("a valid template")
    .progress_chars("#>.");
    let mut shown: Vec<ProgressBar> = Vec::new();
    let mut polls = 0u32;
    loop {
        let summary = get()?;
        if summary.replication.is_empty() {
            anyhow::bail!("module {} has no replicated directory", summary.module);
        }
        while shown.len() < summary.replication.len() {
            let dir = &summary.replication[shown.len()];
            let bar = bars.add(ProgressBar::new(0).with_style(style.clone()));
            bar.set_prefix(dir.dir.display().to_string());
            shown.push(bar);
        }
        for (bar, dir) in shown.iter().zip(&summary.replication) {
            update(bar, dir);
        }
        // Logs and pipes get the same facts as text.
        if bars.is_hidden() && polls.is_multiple_of(PLAIN_EVERY) {
            for dir in summary.replication.iter().filter(|d| !settled(d)) {
                println!("{}", crate::state::replicated(dir));
            }
        }
        polls += 1;
        if summary.replication.iter().all(settled) {
            for (bar, dir) in shown.iter().zip(&summary.replication) {
                bar.finish_and_clear();
                println!("{}", crate::state::replicated(dir));
            }
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// Nothing left to follow here (`idle`: the module does not run).
fn settled(dir: &DirStatus) -> bool {
    matches!(
        dir.activity,
        Activity::Mirroring | Activity::Receiving | Activity::Idle
    )
}

fn update(bar: &ProgressBar, dir: &DirStatus) {
    match &dir.progress {
        Some(p) => {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_total - p.bytes_left);
            bar.set_message(dir.basis.clone().unwrap_or_default());
        }
        None => bar.set_message(crate::state::replicated(dir)),
    }
}
