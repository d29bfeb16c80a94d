//! A mirror module's primary resources — its replicated directories and
//! its virtual IP — handled on the module's worker thread
//! ([`crate::worker`]): mounting,
//! unmounting, starting and stopping receivers wait for disks and peers
//! (a receiver's stop up to its last word), and the VIP for netlink.

use std::net::Ipv4Addr;

use holdfast_config::ModuleConfig;
use holdfast_membership::{LogLevel, State};
use holdfast_network::garp::{self, Announcement};
use holdfast_network::Vip;

use crate::modlog::ModuleLog;
use crate::replication::Replication;
use crate::worker::Job;

/// What the worker of a mirror module owns.
#[derive(Debug)]
pub(crate) struct Resources {
    replication: Option<Replication>,
    vip: Option<holdfast_config::VipConfig>,
    log: ModuleLog,
    module: String,
}

impl Resources {
    pub(crate) fn new(
        config: &ModuleConfig,
        replication: Option<Replication>,
        log: ModuleLog,
    ) -> Self {
        Resources {
            replication,
            vip: config.vip.clone(),
            log,
            module: config.name.clone(),
        }
    }

    /// Adds (then announces) or removes the module's virtual IP. A failure is
    /// logged as an error: the module goes on (its application may still be
    /// reachable on the node's own address), and the log says why clients
    /// cannot reach the VIP.
    fn virtual_ip(&self, up: bool) {
        let Some(vip) = &self.vip else {
            return;
        };
        let interface = match &vip.interface {
            Some(name) => Ok(name.clone()),
            None => Vip::interface_for(vip.address),
        };
        let done = interface.and_then(|interface| {
            if up {
                Vip::add(&interface, vip.address, vip.prefix)?;
            } else {
                Vip::remove(&interface, vip.address, vip.prefix)?;
            }
            Ok(interface)
        });
        match (done, up) {
            (Ok(interface), true) => {
                self.log.write(
                    LogLevel::Info,
                    &format!("virtual IP {} added on {interface}", vip.address),
                );
                // Neighbours learn the new owner; off this thread, since
                // the announcement paces its rounds.
                announce(interface, vip.address, self.log.clone());
            }
            (Ok(interface), false) => {
                tracing::info!(
                    "module {}: virtual IP {} not held on {interface}",
                    self.module,
                    vip.address
                )
            }
            (Err(e), true) => self.log.write(
                LogLevel::Error,
                &format!("cannot add virtual IP {}: {e}", vip.address),
            ),
            (Err(e), false) => self.log.write(
                LogLevel::Error,
                &format!("cannot remove virtual IP {}: {e}", vip.address),
            ),
        }
    }
}

/// Gratuitous ARP for `address` on `interface`, on a thread of its own.
fn announce(interface: String, address: Ipv4Addr, log: ModuleLog) {
    let sent = std::thread::Builder::new()
        .name("garp".into())
        .spawn(move || {
            if let Err(e) = garp::announce(&interface, address, &Announcement::default()) {
                log.write(
                    LogLevel::Error,
                    &format!("gratuitous ARP for {address} failed: {e}"),
                );
            }
        });
    if let Err(e) = sent {
        tracing::error!("gratuitous ARP for {address} not sent: {e}");
    }
}

/// What a mirror module's task asks of its worker.
#[derive(Debug)]
pub(crate) enum ResourceJob {
    /// At module start: see [`Replication::prepare`].
    Prepare,
    /// After an event: see [`Replication::follow`].
    Follow(State),
    /// `AcquirePrimaryResources`: the replicated directories, then the VIP.
    Acquire,
    /// `ReleasePrimaryResources`: the VIP, then the replicated directories.
    Release,
    /// `second --discard-data`: see [`Replication::discard_data`].
    DiscardData,
}

/// What the worker answers, job by job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResourceDone {
    /// Whether this node's data may be promoted.
    Prepared(bool),
    /// A new data state for the state machine, if it changed.
    Followed(Option<bool>),
    Acquired,
    Released,
    DataDiscarded,
}

impl Job for ResourceJob {
    type State = Resources;
    type Done = ResourceDone;

    fn run(self, resources: &mut Resources) -> ResourceDone {
        let replication = resources.replication.as_mut();
        match self {
            ResourceJob::Prepare => ResourceDone::Prepared(replication.is_none_or(|r| r.prepare())),
            ResourceJob::Follow(state) => {
                ResourceDone::Followed(replication.and_then(|r| r.follow(state)))
            }
            ResourceJob::Acquire => {
                if let Some(r) = replication {
                    r.acquire();
                }
                resources.virtual_ip(true);
                ResourceDone::Acquired
            }
            ResourceJob::Release => {
                resources.virtual_ip(false);
                if let Some(r) = resources.replication.as_mut() {
                    r.release();
                }
                ResourceDone::Released
            }
            ResourceJob::DiscardData => {
                if let Some(r) = replication {
                    r.discard_data();
                }
                ResourceDone::DataDiscarded
            }
        }
    }
}
