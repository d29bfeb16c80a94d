//! `holdfast state`: the modules of this node, coloured like the product
//! (PRIM/SECOND green, ALONE orange, STOP/WAIT red).

use holdfast_daemon::registry::ModuleSummary;
use holdfast_daemon::replication::status::{Activity, DirStatus};
use holdfast_membership::State;
use owo_colors::{OwoColorize, Stream};

fn coloured(state: State) -> String {
    let text = format!("{:<6}", state.as_str());
    match state {
        State::Prim | State::Second | State::Up => text
            .if_supports_color(Stream::Stdout, |t| t.green())
            .to_string(),
        // Orange where the terminal has 256 colours would be nicer; yellow is
        // what every terminal shows.
        State::Alone => text
            .if_supports_color(Stream::Stdout, |t| t.yellow())
            .to_string(),
        State::Stop | State::Wait => text
            .if_supports_color(Stream::Stdout, |t| t.red())
            .to_string(),
    }
}

pub fn print(list: &[ModuleSummary]) {
    if list.is_empty() {
        println!("no module installed on this node");
        return;
    }
    println!(
        "{:<12} {:<10} {:<6} {:<18} REASON",
        "MODULE", "NODE", "STATE", "PEER"
    );
    for m in list {
        let v = &m.view;
        let peer = match (&v.farm, v.peer_state) {
            (Some(farm), _) => farm
                .peers
                .iter()
                .map(|(name, state)| match state {
                    Some(state) => format!("{name} {state}"),
                    None => format!("{name} ?"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            (None, Some(state)) => format!("{} {}", v.peer, state),
            (None, None) => format!("{} ?", v.peer),
        };
        let transient = match &v.running_script {
            Some(script) => format!(" [running {script}]"),
            None if v.transient => " [transient]".to_string(),
            None => String::new(),
        };
        let detail = match &v.farm {
            Some(farm) => format!("serving {} of 256 buckets", farm.buckets),
            None => format!("heartbeat networks: {}", networks_text(&v.networks_up)),
        };
        println!(
            "{:<12} {:<10} {} {:<18} {}{} ({detail})",
            m.module,
            m.node,
            coloured(v.state),
            peer,
            v.reason,
            transient,
        );
        for dir in &m.replication {
            println!("  {}", replicated(dir));
        }
    }
}

/// Width of the text progress bar.
const BAR: usize = 30;

/// One replicated directory: what it does, a bar while resynchronising.
pub fn replicated(dir: &DirStatus) -> String {
    let activity = match dir.activity {
        Activity::Idle => "idle",
        Activity::Receiving => "receiving (read-only here)",
        Activity::Tracking => "tracking changes (no secondary)",
        Activity::Resynchronising => "resynchronising",
        Activity::Mirroring => "mirroring",
        Activity::Holding => "holding writes for the secondary",
    };
    let mut line = format!("{} {activity}", dir.dir.display());
    if let Some(basis) = &dir.basis {
        line.push_str(&format!(" ({basis})"));
    }
    if let Some(p) = &dir.progress {
        let filled = (p.fraction() * BAR as f64).round() as usize;
        line.push_str(&format!(
            " [{}{}] {}",
            "#".repeat(filled),
            ".".repeat(BAR - filled.min(BAR)),
            p.describe()
        ));
    }
    if let Some(tracked) = &dir.tracked {
        line.push_str(&format!(": {}", tracked.describe()));
    }
    if let Some(problem) = &dir.problem {
        line.push_str(&format!(": {problem}"));
    }
    line
}

fn networks_text(up: &[bool]) -> String {
    up.iter()
        .map(|up| if *up { "up" } else { "down" })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_daemon::replication::status::{ResyncProgress, TrackedChanges};
    use holdfast_replication::TrackedSummary;

    #[test]
    fn a_resynchronising_directory_shows_a_bar_and_what_is_left() {
        let dir = DirStatus {
            dir: "/srv/app/data".into(),
            activity: Activity::Resynchronising,
            progress: Some(ResyncProgress {
                bytes_total: 4 << 20,
                bytes_left: 3 << 20,
                bytes_sent: 1 << 20,
                rate: 512.0 * 1024.0,
                eta_seconds: Some(5.5),
            }),
            basis: Some("tracked changes and the secondary's activity log: 3 regions".into()),
            problem: None,
            tracked: None,
            last_resync: None,
            unacknowledged: None,
        };
        assert_eq!(
            replicated(&dir),
            format!(
                "/srv/app/data resynchronising (tracked changes and the secondary's activity log: 3 regions) [{}{}] 25% (3.0 MiB left of 4.0 MiB, 512.0 KiB/s, about 6 s left)",
                "#".repeat(8),
                ".".repeat(22)
            )
        );
        let refused = DirStatus {
            activity: Activity::Tracking,
            progress: None,
            basis: None,
            problem: Some("no shared history".into()),
            ..dir
        };
        assert_eq!(
            replicated(&refused),
            "/srv/app/data tracking changes (no secondary): no shared history"
        );
    }

    fn alone(summary: TrackedSummary, rate: Option<f64>, eta: Option<f64>) -> String {
        replicated(&DirStatus {
            dir: "/srv/app/data".into(),
            activity: Activity::Tracking,
            progress: None,
            basis: None,
            problem: None,
            tracked: Some(TrackedChanges {
                summary,
                rate,
                eta_seconds: eta,
            }),
            last_resync: None,
            unacknowledged: None,
        })
    }

    #[test]
    fn an_alone_directory_tells_what_the_secondary_will_be_sent() {
        let tracked = TrackedSummary {
            files: 12,
            bytes: 3 << 20,
            entries: 4,
            ..TrackedSummary::default()
        };
        assert_eq!(
            alone(tracked, Some(1024.0 * 1024.0), Some(3.0)),
            "/srv/app/data tracking changes (no secondary): 12 files, 3.0 MiB to send, 4 entries since the secondary left: about 3 s at the last resynchronisation's 1.0 MiB/s"
        );
        let after_crash = TrackedSummary {
            directories: 2,
            ..tracked
        };
        assert_eq!(
            alone(after_crash, None, None),
            "/srv/app/data tracking changes (no secondary): 12 files, 3.0 MiB to send, 4 entries since the secondary left, and 2 directories compared entry by entry (what differs there is unknown until compared)"
        );
        let lost = TrackedSummary {
            everything: true,
            ..TrackedSummary::default()
        };
        assert!(alone(lost, None, None).ends_with(
            "unknown until compared (change tracking was lost: every file is compared by checksum)"
        ));
    }
}
