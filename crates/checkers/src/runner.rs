//! Running checkers: one tokio task per checker probes it every interval,
//! smooths the results and sends an event only when its verdict changes.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{interval_at, timeout, Instant, MissedTickBehavior};

use crate::error::CheckerError;
use crate::probe::{AnyProbe, Probe, ProbeContext};
use crate::verdict::{Smoother, Verdict};
use holdfast_config::checker::{validate_all, CheckerConfig, When};

/// Margin over a checker's timeout before the runner gives up on a probe
/// itself: probes bound their own work, this only guards against one that
/// does not.
const PROBE_MARGIN: Duration = Duration::from_secs(1);

/// A checker's verdict changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckerEvent {
    /// The checker's resource, `<class>.<name>` (`ping.gateway`).
    pub checker: String,
    pub verdict: Verdict,
}

/// The checkers of one module (or one activation class of it), running.
/// Dropping it stops them.
#[derive(Debug)]
pub struct Runner {
    tasks: Vec<(String, JoinHandle<()>)>,
}

impl Runner {
    /// Validates and builds every checker (nothing runs if one fails), then
    /// starts one task per checker, sending its verdict changes on
    /// `events`. Before its first event a checker has no verdict (SafeKit's
    /// `init`). Must run inside a tokio runtime; network probes use the
    /// calling thread's network namespace.
    pub fn start(
        checkers: &[CheckerConfig],
        context: &ProbeContext,
        events: mpsc::Sender<CheckerEvent>,
    ) -> Result<Self, CheckerError> {
        validate_all(checkers)?;
        let probes = checkers
            .iter()
            .map(|c| AnyProbe::build(c, context))
            .collect::<Result<Vec<_>, _>>()?;
        let tasks = checkers
            .iter()
            .zip(probes)
            .map(|(config, probe)| {
                let task = tokio::spawn(run_checker(config.clone(), probe, events.clone()));
                (config.resource(), task)
            })
            .collect();
        Ok(Self { tasks })
    }

    /// Resources of the running checkers.
    pub fn checkers(&self) -> impl Iterator<Item = &str> {
        self.tasks.iter().map(|(name, _)| name.as_str())
    }

    /// Stops every checker now (a probe in flight is abandoned: a custom
    /// script is killed on drop).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        for (_, task) in &self.tasks {
            task.abort();
        }
    }
}

/// Probes one checker forever (until aborted or the receiver is gone).
async fn run_checker<P: Probe>(
    config: CheckerConfig,
    mut probe: P,
    events: mpsc::Sender<CheckerEvent>,
) {
    let checker = config.resource();
    let mut smoother = Smoother::new(config.down_after, config.up_after);
    // An application checker starts with its application, which needs
    // time to come up (a process started in the background, a port not
    // listening yet): its first probe is one interval after the start, as
    // SafeKit's. A resource checker (`pre`) probes at once: the module must
    // know what is missing before it starts anything.
    let first = match config.when {
        When::Pre => Instant::now(),
        _ => Instant::now() + config.interval,
    };
    let mut ticks = interval_at(first, config.interval);
    // A probe longer than the interval delays the next one rather than
    // triggering a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let limit = config.timeout + PROBE_MARGIN;
    loop {
        ticks.tick().await;
        let verdict = match timeout(limit, probe.probe()).await {
            Ok(verdict) => verdict,
            Err(_) => Verdict::Down(format!("{checker}: probe did not finish within {limit:?}")),
        };
        if let Some(verdict) = smoother.observe(verdict) {
            let event = CheckerEvent {
                checker: checker.clone(),
                verdict,
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}
