//! `holdfast witness`: the split-brain witness on a third machine. A thin
//! UDP shell around [`WitnessCore`]: authenticate each lease request with
//! the cluster key, reject replays, ask the core, answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use holdfast_membership::heartbeat::MAX_DATAGRAM;
use holdfast_membership::lease::{LeaseReply, LeaseRequest, Verdict, WitnessCore};
use holdfast_membership::{ClusterKey, ReplayGuard};
use tokio::net::UdpSocket;

use crate::DaemonError;

/// Serves lease requests on `listen` until the process ends. Grants and
/// changes of holder are logged (tracing, on stderr); rejected datagrams at
/// most once per few seconds.
pub async fn serve(
    listen: SocketAddr,
    key: ClusterKey,
    max_lease: Duration,
) -> Result<(), DaemonError> {
    let socket = UdpSocket::bind(listen)
        .await
        .map_err(|e| DaemonError::Io(format!("witness socket {listen}"), e))?;
    tracing::info!(
        "witness listening on {listen}; no lease granted for the first {max_lease:?} (leases granted before a restart may still run)"
    );
    let mut core = WitnessCore::new(max_lease, Instant::now());
    let mut replay = ReplayGuard::default();
    let mut last_rejection: Option<Instant> = None;
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!("witness receive: {e}");
                continue;
            }
        };
        let now = Instant::now();
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
                if last_rejection.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5)) {
                    tracing::warn!("rejected lease request from {from}: {e}");
                    last_rejection = Some(now);
                }
                continue;
            }
        };
        let before = core.holder(now, &request.module).map(str::to_string);
        let duration = Duration::from_millis(request.duration_ms);
        let verdict = core.request(now, &request.module, &request.node, duration);
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
        if let Verdict::TooLong { max_ms } = &verdict {
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
            verdict,
        };
        if let Err(e) = socket.send_to(&reply.encode(&key), from).await {
            tracing::debug!("witness reply to {from}: {e}");
        }
    }
}
