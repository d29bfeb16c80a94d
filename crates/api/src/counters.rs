//! The metrics counted between scrapes of `/metrics`
//! (`routes/metrics.rs`): settled transitions and failovers, counted from
//! this node's events as they happen.

use std::sync::Arc;

use holdfast_daemon::events::{EventBus, EventKind, StepKind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// A series' labels.
pub type Labels = Vec<(&'static str, String)>;

/// The counters kept between scrapes, fed by this node's events.
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) transitions: Family<Labels, Counter>,
    pub(crate) failovers: Family<Labels, Counter>,
}

impl Counters {
    /// Counts this node's settled transitions until the bus ends.
    pub async fn follow(self: Arc<Self>, bus: Arc<EventBus>) {
        let mut events = bus.subscribe();
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!("metrics: {missed} events missed by the counters");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if event.node != bus.node() || event.kind != EventKind::Transition {
                continue;
            }
            let (module, from, to) = (
                event.module.unwrap_or_default(),
                event.from.unwrap_or_default(),
                event.to.unwrap_or_default(),
            );
            self.transitions
                .get_or_create(&vec![
                    ("module", module.clone()),
                    ("from", from.clone()),
                    ("to", to.clone()),
                ])
                .inc();
            // Taking the application over from the peer: a failover; its
            // reason is what started the chain.
            if matches!(from.as_str(), "SECOND" | "WAIT") && matches!(to.as_str(), "ALONE" | "PRIM")
            {
                let reason = match event.cause.first().map(|l| l.step) {
                    Some(StepKind::Checker) => "checker",
                    Some(StepKind::Command) => "command",
                    _ => "peer",
                };
                self.failovers
                    .get_or_create(&vec![("module", module), ("reason", reason.to_string())])
                    .inc();
            }
        }
    }
}
