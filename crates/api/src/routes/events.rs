//! The cluster's timeline: `GET /v1/events` streams events as server-sent
//! events (every node's: this node relays the others', `event_relay.rs`),
//! `GET /v1/events/recent` answers the recent ones as JSON. A client that
//! reconnects (to this node or another) asks for what it missed with the
//! standard `Last-Event-ID` header or `?since=<time_ms>`; ids are unique
//! in the cluster, so duplicates are dropped by id. Schema:
//! `docs/events.md`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use holdfast_daemon::events::{Event, EventBus};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use crate::Shared;

/// A comment line this often keeps proxies (and the relaying nodes, which
/// count silence as a dead peer) from closing an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Milliseconds since the Unix epoch: events at or after this time.
    pub since: Option<u64>,
    /// Only this node's own events (how nodes relay each other's).
    #[serde(default)]
    pub local: bool,
}

#[utoipa::path(get, path = "/v1/events/recent", tag = "events",
    description = "The recent events of every node (the last 2000 this node learnt), in the order it learnt them (docs/events.md). Role: monitor.",
    params(EventsQuery),
    responses((status = 200, body = Vec<Event>), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn recent(State(app): Shared, Query(query): Query<EventsQuery>) -> Json<Vec<Event>> {
    let events = app.events.recent(query.since);
    Json(keep(&app.events, query.local, events))
}

#[utoipa::path(get, path = "/v1/events", tag = "events",
    description = "Every node's events as server-sent events (id: the event's id; data: the event's JSON, schema Event): with Last-Event-ID, those after it first; with since, the recent ones at or after it; then live. A comment every 10 s keeps it open. Role: monitor.",
    params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "the id of the last event received")),
    responses((status = 200, description = "an endless stream of events", content_type = "text/event-stream", body = String), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn stream(
    State(app): Shared,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let bus = app.events.clone();
    // Subscribed before reading the backlog: nothing falls in between.
    let live = bus.subscribe();
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let backlog = match (&last_id, query.since) {
        (Some(id), since) => bus.after(id).unwrap_or_else(|| bus.recent(since)),
        (None, Some(since)) => bus.recent(Some(since)),
        (None, None) => Vec::new(),
    };
    let backlog = keep(&bus, query.local, backlog);
    let follow = Follow {
        seen: backlog.iter().map(|e| e.id.clone()).collect(),
        last: backlog.last().map(|e| e.id.clone()).or(last_id),
        live,
        bus: bus.clone(),
        local: query.local,
    };
    let events = stream::iter(backlog)
        .chain(stream::unfold(follow, Follow::next_batch).flat_map(stream::iter));
    Sse::new(events.map(|e| Ok(sse(&e)))).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// What a stream has sent, to go on after it.
struct Follow {
    live: Receiver<Event>,
    bus: Arc<EventBus>,
    /// Sent from the backlog: the same may arrive live.
    seen: HashSet<String>,
    last: Option<String>,
    local: bool,
}

impl Follow {
    /// The next events to send; after falling behind the broadcast, those
    /// missed, from the buffer.
    async fn next_batch(mut self) -> Option<(Vec<Event>, Self)> {
        loop {
            let batch = match self.live.recv().await {
                Ok(event) => vec![event],
                Err(RecvError::Lagged(_)) => match &self.last {
                    Some(id) => self.bus.after(id).unwrap_or_else(|| self.bus.recent(None)),
                    None => self.bus.recent(None),
                },
                Err(RecvError::Closed) => return None,
            };
            let batch: Vec<Event> = keep(&self.bus, self.local, batch)
                .into_iter()
                .filter(|e| !self.seen.remove(&e.id))
                .collect();
            if let Some(last) = batch.last() {
                self.last = Some(last.id.clone());
                return Some((batch, self));
            }
        }
    }
}

fn keep(bus: &EventBus, local: bool, events: Vec<Event>) -> Vec<Event> {
    match local {
        true => events
            .into_iter()
            .filter(|e| e.node == bus.node())
            .collect(),
        false => events,
    }
}

fn sse(event: &Event) -> SseEvent {
    SseEvent::default()
        .id(event.id.clone())
        .json_data(event)
        .unwrap_or_else(|e| SseEvent::default().comment(format!("event not encoded: {e}")))
}
