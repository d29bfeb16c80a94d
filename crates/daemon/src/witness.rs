//! `holdfast witness`: the split-brain witness on a third machine. A thin
//! UDP shell around [`WitnessCore`]: authenticate each lease request with
//! the cluster key, reject replays, ask the core, store the outdated copies
//! it records (synced, before answering), answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use holdfast_key::ClusterKey;
use holdfast_membership::datagram::MAX_DATAGRAM;
use holdfast_membership::lease::{
    LeaseDecision, LeaseReply, LeaseRequest, OutdatedCopy, WitnessCore,
};
use holdfast_membership::ReplayGuard;
use holdfast_replication::durable;
use tokio::net::UdpSocket;

use crate::refusals::{Refusal, RefusalKind, Refusals};
use crate::DaemonError;

type Outdated = BTreeMap<String, OutdatedCopy>;

/// The outdated copies recorded before (none if `state` does not exist).
fn load(state: &Path) -> Result<Outdated, DaemonError> {
    match std::fs::read(state) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            DaemonError::Io(
                format!("witness state {} (fix or remove it)", state.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Outdated::new()),
        Err(e) => Err(DaemonError::Io(
            format!("witness state {}", state.display()),
            e,
        )),
    }
}

fn save(state: &Path, outdated: &Outdated) -> std::io::Result<()> {
    if let Some(dir) = state.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(outdated).expect("plain data always encodes");
    durable::replace(state, &json)
}

/// Serves lease requests on `listen` until the process ends, keeping the
/// outdated copies in `state`. Grants, changes of holder and of outdated
/// copies are logged (tracing, on stderr); refused datagrams too, summarised
/// when they repeat ([`Refusals`]).
pub async fn serve(
    listen: SocketAddr,
    key: ClusterKey,
    max_lease: Duration,
    state: &Path,
) -> Result<(), DaemonError> {
    let mut saved = load(state)?;
    let socket = UdpSocket::bind(listen)
        .await
        .map_err(|e| DaemonError::Io(format!("witness socket {listen}"), e))?;
    tracing::info!(
        "witness listening on {listen}; no lease granted for the first {max_lease:?} (leases granted before a restart may still run)"
    );
    for (module, copy) in &saved {
        tracing::info!(
            "module {module}: the copy of {} is outdated (said {}): no lease for it",
            copy.node,
            copy.by
        );
    }
    let mut core = WitnessCore::new(max_lease, Instant::now(), saved.clone());
    let mut replay = ReplayGuard::default();
    let mut refusals = Refusals::default();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let summary_due = refusals.next_due();
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => Some(received),
            () = sleep_until(summary_due) => None,
        };
        let now = Instant::now();
        let (len, from) = match received {
            Some(Ok(received)) => received,
            Some(Err(e)) => {
                tracing::warn!("witness receive: {e}");
                continue;
            }
            None => {
                for line in refusals.due(now) {
                    tracing::warn!("{line}");
                }
                continue;
            }
        };
        let request = LeaseRequest::decode(&buf[..len], &key).and_then(|r| {
            // One replay guard entry per module and node.
            replay.check_stamp(
                &format!("{}/{}", r.module, r.node),
                0,
                (r.incarnation, r.id),
            )?;
            Ok(r)
        });
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                let refusal = Refusal {
                    kind: RefusalKind {
                        what: "lease request",
                        why: e.class(),
                    },
                    from,
                    reason: e.to_string(),
                };
                for line in refusals.refuse(now, refusal) {
                    tracing::warn!("{line}");
                }
                continue;
            }
        };
        let before = core.holder(now, &request.module).map(str::to_string);
        let duration = Duration::from_millis(request.duration_ms);
        let decision = core.request(
            now,
            &request.module,
            &request.node,
            (request.incarnation, request.id),
            duration,
            &request.peer_copy,
        );
        if core.outdated() != &saved {
            // No grant that records a copy outdated is answered before
            // the record is durable: the node acts on it.
            let (path, outdated) = (state.to_path_buf(), core.outdated().clone());
            // Off the runtime (it syncs), awaited: answered after.
            let stored = tokio::task::spawn_blocking(move || save(&path, &outdated))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = stored {
                tracing::error!(
                    "cannot store the witness state in {}: {e}; request not answered",
                    state.display()
                );
                continue;
            }
            tracing::info!(
                "module {}: outdated copies now {:?}",
                request.module,
                core.outdated().get(&request.module)
            );
            saved = core.outdated().clone();
        }
        let after = core.holder(now, &request.module);
        if before.as_deref() != after {
            match after {
                Some(holder) => tracing::info!(
                    "module {}: lease granted to {holder} ({} ms, renewed while it asks)",
                    request.module,
                    request.duration_ms
                ),
                None => tracing::info!(
                    "module {}: lease given back by {}",
                    request.module,
                    request.node
                ),
            }
        }
        if let LeaseDecision::TooLong { max_ms } = &decision {
            tracing::warn!(
                "module {}: {} asks for a {} ms lease, more than --max-lease ({max_ms} ms): refused",
                request.module,
                request.node,
                request.duration_ms
            );
        }
        let reply = LeaseReply {
            module: request.module,
            node: request.node,
            incarnation: request.incarnation,
            id: request.id,
            decision,
        };
        if let Err(e) = socket.send_to(&reply.encode(&key), from).await {
            tracing::debug!("witness reply to {from}: {e}");
        }
    }
}

/// Resolves at `deadline`; never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_lab::syscalls::{child_argument, replaces_durably};

    /// The outdated marks decide whom the witness refuses the lease: once
    /// saved, a power loss must not bring the old file back.
    #[test]
    fn outdated_marks_are_saved_durably() {
        if let Some(state) = child_argument() {
            return save(Path::new(&state), &Outdated::new()).unwrap();
        }
        if let Err(e) = replaces_durably("witness::tests::outdated_marks_are_saved_durably") {
            panic!("{e}");
        }
    }
}
