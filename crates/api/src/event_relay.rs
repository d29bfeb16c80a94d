//! Every node shows the whole cluster's timeline: it follows each other
//! member's own events (`/v1/events?local=true`, over mutual TLS) and adds
//! them to its [`EventBus`], so a console or `holdfast events` connected to
//! any node sees every node's, and one that loses its node reconnects to a
//! survivor with `since` and misses nothing the survivor relayed. A member
//! that stops answering is an event itself (`node_unreachable`); it is
//! followed again, from its last event, once it answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use holdfast_daemon::events::{Draft, EventKind, SseReader};
use http_body_util::BodyExt;

use crate::routes::events::KEEP_ALIVE;
use crate::{peers, App};

/// How often the members are looked at (one joined, one left).
const MEMBERS_EVERY: Duration = Duration::from_secs(2);
/// Silence longer than this (keep-alives included) means the peer is gone.
const SILENCE: Duration = Duration::from_secs(3 * KEEP_ALIVE.as_secs());
/// Reconnection waits grow from the first to the last, doubling.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_LAST: Duration = Duration::from_secs(5);

/// Runs until aborted: one follower per other member.
pub async fn run(app: Arc<App>) {
    let mut followers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        if app.tls().is_some() {
            let record = app.record();
            followers.retain(|node, task| {
                let member = record.nodes.contains_key(node);
                if !member {
                    task.abort();
                }
                member && !task.is_finished()
            });
            for (node, _) in record.others(&app.node) {
                if !followers.contains_key(node) {
                    let task = tokio::spawn(follow(app.clone(), node.to_string()));
                    followers.insert(node.to_string(), task);
                }
            }
        }
        tokio::time::sleep(MEMBERS_EVERY).await;
    }
}

/// Follows `node`'s events for as long as it is a member.
async fn follow(app: Arc<App>, node: String) {
    let mut since: Option<u64> = None;
    let mut retry = RETRY_FIRST;
    // Whether the last attempt reached it (`None`: not tried yet).
    let mut reachable: Option<bool> = None;
    loop {
        let failure = match read(&app, &node, &mut since, &mut reachable).await {
            Ok(()) => "its event stream ended".to_string(),
            Err(reason) => reason,
        };
        if reachable != Some(false) {
            tracing::warn!("events of node {node} not relayed: {failure}");
            app.events.publish(Draft::new(
                EventKind::NodeUnreachable,
                format!("node {node} does not answer: {failure}"),
            ));
            retry = RETRY_FIRST;
        }
        reachable = Some(false);
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_LAST);
    }
}

/// Reads `node`'s stream until it ends or fails, adding its events.
async fn read(
    app: &App,
    node: &str,
    since: &mut Option<u64>,
    reachable: &mut Option<bool>,
) -> Result<(), String> {
    let tls = app.tls().ok_or("this node has no certificate")?;
    let address = app
        .record()
        .nodes
        .get(node)
        .map(|m| m.address)
        .ok_or("no longer a member")?;
    let path = match since {
        Some(ms) => format!("/v1/events?local=true&since={ms}"),
        None => "/v1/events?local=true&since=0".to_string(),
    };
    let mut answer = peers::open(tls.client, address, &path).await?;
    if !answer.status.is_success() {
        return Err(format!("it refused the stream: {}", answer.status));
    }
    if *reachable == Some(false) {
        tracing::info!("events of node {node} relayed again");
        app.events.publish(Draft::new(
            EventKind::NodeReachable,
            format!("node {node} answers again"),
        ));
    }
    *reachable = Some(true);
    let mut lines = SseReader::default();
    loop {
        let frame = tokio::time::timeout(SILENCE, answer.body.frame())
            .await
            .map_err(|_| format!("silent for {SILENCE:?}"))?;
        let Some(frame) = frame else {
            return Ok(());
        };
        let frame = frame.map_err(|e| format!("reading its events: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for event in lines.push(&data) {
            match event {
                Ok(event) if event.node == node => {
                    *since = Some(event.time_ms);
                    app.events.add(event);
                }
                Ok(event) => tracing::warn!(
                    "node {node} sent an event of node {}: not relayed",
                    event.node
                ),
                Err(e) => tracing::warn!("node {node} sent an event that does not parse: {e}"),
            }
        }
    }
}
