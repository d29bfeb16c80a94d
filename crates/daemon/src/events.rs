//! The cluster's timeline, as this node sees it: events (a module's state
//! change with its cause chain — checker verdict, decision, scripts,
//! resources, result — and durations), kept in a bounded buffer of recent
//! events and broadcast to subscribers (the API's `/v1/events`). Each
//! module's [`Timeline`] gathers the chain where the shell carries out its
//! machine's actions; other nodes' events are added by the API, which
//! relays them ([`EventBus::add`]), so any node shows the whole cluster.
//! The JSON is documented in `docs/events.md` and is a stable schema.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use holdfast_membership::{ScriptOutcome, ScriptRun, State};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// How many events a node keeps for clients that reconnect.
pub const RECENT_EVENTS: usize = 2000;
/// How many causes wait for a state change they may lead to.
const LOOSE_CAUSES: usize = 8;

/// One event of the timeline (`docs/events.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Unique in the cluster: `<node>-<incarnation>-<sequence>`.
    pub id: String,
    /// When it happened on its node (RFC 3339, milliseconds, UTC).
    pub time: String,
    /// The same, in milliseconds since the Unix epoch (for `since`).
    pub time_ms: u64,
    /// The node it happened on.
    pub node: String,
    /// The module, if the event is a module's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    pub kind: EventKind,
    /// The module's state before, and after (or, for `transition_started`,
    /// the state it goes to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// In a sentence: why.
    pub reason: String,
    /// What led to it, in order.
    #[serde(default)]
    pub cause: Vec<Link>,
    /// From the first cause to the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `ok`, or `failed` when a script or a resource failed on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Outcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A checker's verdict changed.
    Checker,
    /// A module's displayed state started to change (scripts follow).
    TransitionStarted,
    /// A module's state changed and settled: the whole cause chain.
    Transition,
    /// Another node stopped answering this node's relay of its events.
    NodeUnreachable,
    /// It answers again.
    NodeReachable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
}

/// One step of a cause chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Link {
    pub step: StepKind,
    /// What happened, in a sentence (a verdict, a decision, a script and
    /// its arguments, the resources).
    pub what: String,
    /// Milliseconds after the chain's first link.
    pub at_ms: u64,
    /// How long it took, for scripts and resources once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Outcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A checker's verdict.
    Checker,
    /// An administrator's (or a script's) command.
    Command,
    /// The state machine's decision: a change of the displayed state.
    Decision,
    Script,
    /// Primary resources (replicated directories, virtual IP) or a farm's
    /// buckets, on the module's worker.
    Resources,
    /// The state reached.
    Result,
}

/// This node's events: the recent ones, and their subscribers.
#[derive(Debug)]
pub struct EventBus {
    node: String,
    incarnation: u64,
    next: AtomicU64,
    recent: Mutex<VecDeque<Event>>,
    live: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(node: &str, incarnation: u64) -> Self {
        Self {
            node: node.to_string(),
            incarnation,
            next: AtomicU64::new(1),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
            live: broadcast::channel(1024).0,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// An event of this node, numbered and timed now.
    pub fn publish(&self, draft: Draft) {
        let (time, time_ms) = now();
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.add(Event {
            id: format!("{}-{}-{seq}", self.node, self.incarnation),
            time,
            time_ms,
            node: self.node.clone(),
            module: draft.module,
            kind: draft.kind,
            from: draft.from.map(|s| s.to_string()),
            to: draft.to.map(|s| s.to_string()),
            reason: draft.reason,
            cause: draft.cause,
            duration_ms: draft.duration_ms,
            result: draft.result,
        });
    }

    /// Keeps and broadcasts `event` (another node's, relayed), unless it
    /// is already here; says whether it was new.
    pub fn add(&self, event: Event) -> bool {
        {
            let mut recent = self.recent.lock();
            if recent.iter().rev().any(|e| e.id == event.id) {
                return false;
            }
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // No subscriber is not an error: the buffer keeps it.
        let _ = self.live.send(event);
        true
    }

    /// The recent events at or after `since_ms` (all if `None`), in the
    /// order this node learnt them.
    pub fn recent(&self, since_ms: Option<u64>) -> Vec<Event> {
        self.recent
            .lock()
            .iter()
            .filter(|e| since_ms.is_none_or(|since| e.time_ms >= since))
            .cloned()
            .collect()
    }

    /// The recent events learnt after the one with `id`; `None` if this
    /// node no longer (or never) had it.
    pub fn after(&self, id: &str) -> Option<Vec<Event>> {
        let recent = self.recent.lock();
        let at = recent.iter().position(|e| e.id == id)?;
        Some(recent.iter().skip(at + 1).cloned().collect())
    }

    /// Events from now on. Subscribe before reading [`Self::recent`] so
    /// nothing falls in between (the duplicates have known ids).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}

/// An event before it is numbered and timed.
#[derive(Debug, Clone)]
pub struct Draft {
    pub module: Option<String>,
    pub kind: EventKind,
    pub from: Option<State>,
    pub to: Option<State>,
    pub reason: String,
    pub cause: Vec<Link>,
    pub duration_ms: Option<u64>,
    pub result: Option<Outcome>,
}

impl Draft {
    pub fn new(kind: EventKind, reason: impl Into<String>) -> Self {
        Self {
            module: None,
            kind,
            from: None,
            to: None,
            reason: reason.into(),
            cause: Vec::new(),
            duration_ms: None,
            result: None,
        }
    }
}

fn now() -> (String, u64) {
    let now = SystemTime::now();
    let ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (humantime::format_rfc3339_millis(now).to_string(), ms)
}

/// One module's cause chain as it is carried out: opened by a change of
/// state (or kept waiting: a verdict), closed when the module settles.
#[derive(Debug)]
pub(crate) struct Timeline {
    bus: std::sync::Arc<EventBus>,
    module: String,
    chain: Mutex<Chain>,
}

#[derive(Debug, Default)]
struct Chain {
    /// The state the change started from, once a change is under way.
    from: Option<State>,
    first: Option<Instant>,
    links: Vec<Link>,
    /// Scripts running: their id and link.
    scripts: HashMap<u64, (Instant, usize)>,
    /// Work on the worker, oldest first.
    work: VecDeque<(Instant, usize)>,
    failed: bool,
}

impl Chain {
    fn push(&mut self, now: Instant, step: StepKind, what: String) -> usize {
        let first = *self.first.get_or_insert(now);
        if self.from.is_none() && self.links.len() == LOOSE_CAUSES {
            // Causes that led to no change yet: keep the newest.
            self.links.remove(0);
        }
        self.links.push(Link {
            step,
            what,
            at_ms: millis(now - first),
            duration_ms: None,
            result: None,
        });
        self.links.len() - 1
    }

    fn finish(&mut self, (started, link): (Instant, usize), ok: bool) {
        if let Some(link) = self.links.get_mut(link) {
            link.duration_ms = Some(millis(started.elapsed()));
            link.result = Some(if ok { Outcome::Ok } else { Outcome::Failed });
        }
        self.failed |= !ok;
    }
}

fn millis(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

impl Timeline {
    pub(crate) fn new(bus: std::sync::Arc<EventBus>, module: &str) -> Self {
        Self {
            bus,
            module: module.to_string(),
            chain: Mutex::default(),
        }
    }

    fn draft(&self, kind: EventKind, reason: impl Into<String>) -> Draft {
        Draft {
            module: Some(self.module.clone()),
            ..Draft::new(kind, reason)
        }
    }

    /// A checker's verdict: an event of its own, and the first link of
    /// whatever it leads to.
    pub(crate) fn verdict(&self, checker: &str, verdict: &str) {
        let what = format!("checker {checker}: {verdict}");
        self.chain
            .lock()
            .push(Instant::now(), StepKind::Checker, what.clone());
        self.bus.publish(self.draft(EventKind::Checker, what));
    }

    /// An accepted command.
    pub(crate) fn command(&self, command: &str) {
        self.chain.lock().push(
            Instant::now(),
            StepKind::Command,
            format!("command {command}"),
        );
    }

    /// The machine changed the displayed state.
    pub(crate) fn transition(&self, from: State, to: State, reason: &str) {
        let (draft, started) = {
            let mut chain = self.chain.lock();
            let started = chain.from.is_none();
            chain.from.get_or_insert(from);
            chain.push(
                Instant::now(),
                StepKind::Decision,
                format!("{from} -> {to}: {reason}"),
            );
            let draft = Draft {
                from: Some(from),
                to: Some(to),
                cause: chain.links.clone(),
                ..self.draft(EventKind::TransitionStarted, reason)
            };
            (draft, started)
        };
        if started {
            self.bus.publish(draft);
        }
    }

    pub(crate) fn script_started(&self, run: &ScriptRun, args: &[String]) {
        let mut chain = self.chain.lock();
        let now = Instant::now();
        let link = chain.push(
            now,
            StepKind::Script,
            format!("{} {}", run.script.name(), args.join(" ")),
        );
        chain.scripts.insert(run.id, (now, link));
    }

    pub(crate) fn script_done(&self, id: u64, outcome: &ScriptOutcome) {
        let mut chain = self.chain.lock();
        if let Some(running) = chain.scripts.remove(&id) {
            let ok = matches!(outcome, ScriptOutcome::Success | ScriptOutcome::Missing);
            chain.finish(running, ok);
            if let (ScriptOutcome::Missing, Some(link)) = (outcome, chain.links.get_mut(running.1))
            {
                link.what.push_str(" (no such script)");
            }
        }
    }

    /// Work asked of the module's worker (what it is, in a sentence).
    pub(crate) fn work_started(&self, what: String) {
        let mut chain = self.chain.lock();
        let now = Instant::now();
        let link = chain.push(now, StepKind::Resources, what);
        chain.work.push_back((now, link));
    }

    /// The oldest work asked is done.
    pub(crate) fn work_done(&self, ok: bool) {
        let mut chain = self.chain.lock();
        if let Some(work) = chain.work.pop_front() {
            chain.finish(work, ok);
        }
    }

    /// The module settled in `state` (nothing running, nothing pending):
    /// a change under way ends here with its whole chain.
    pub(crate) fn settled(&self, state: State, reason: &str) {
        let draft = {
            let mut chain = self.chain.lock();
            let Some(from) = chain.from else {
                // Work done with no change (the module's own set-up), and
                // causes that led to none: not the cause of a later one.
                *chain = Chain::default();
                return;
            };
            let now = Instant::now();
            chain.push(now, StepKind::Result, format!("{state}: {reason}"));
            let chain = std::mem::take(&mut *chain);
            Draft {
                from: Some(from),
                to: Some(state),
                duration_ms: chain.first.map(|first| millis(now - first)),
                result: Some(if chain.failed {
                    Outcome::Failed
                } else {
                    Outcome::Ok
                }),
                cause: chain.links,
                ..self.draft(EventKind::Transition, reason)
            }
        };
        self.bus.publish(draft);
    }
}

/// The events of a `/v1/events` stream, parsed as bytes arrive (by the
/// nodes relaying each other's, and by `holdfast events`): the `data:` lines of each
/// event (up to the blank line ending it); comments and ids are skipped,
/// the id being in the event itself.
#[derive(Debug, Default)]
pub struct SseReader {
    partial: Vec<u8>,
    data: String,
}

/// Longest event accepted: a peer cannot make this node buffer without end.
const MAX_EVENT: usize = 1 << 20;

impl SseReader {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<Event, String>> {
        let mut events = Vec::new();
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    let data = std::mem::take(&mut self.data);
                    events.push(serde_json::from_str(&data).map_err(|e| e.to_string()));
                }
            } else if let Some(data) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(data.strip_prefix(' ').unwrap_or(data));
            }
        }
        if self.partial.len() + self.data.len() > MAX_EVENT {
            self.partial.clear();
            self.data.clear();
            events.push(Err(format!("an event longer than {MAX_EVENT} bytes")));
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_membership::{Script, ScriptAction};
    use std::sync::Arc;

    fn run(id: u64) -> ScriptRun {
        ScriptRun {
            id,
            script: Script::StartPrim,
            force: false,
            current: State::Second,
            next: State::Alone,
            action: ScriptAction::Start,
            reason: "peer silent".into(),
        }
    }

    #[test]
    fn a_failover_is_one_event_with_its_whole_chain() {
        let bus = Arc::new(EventBus::new("n1", 7));
        let mut live = bus.subscribe();
        let timeline = Timeline::new(bus.clone(), "web");
        timeline.work_started("set-up".into());
        timeline.work_done(true);
        timeline.settled(State::Second, "mirroring");
        timeline.verdict("ping", "down: no answer");
        timeline.transition(State::Second, State::Alone, "peer silent");
        timeline.work_started("acquire primary resources".into());
        timeline.work_done(true);
        timeline.script_started(&run(3), &["start".into()]);
        timeline.script_done(3, &ScriptOutcome::Failed("exit 1".into()));
        timeline.settled(State::Alone, "running alone");

        let events = bus.recent(None);
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Checker,
                EventKind::TransitionStarted,
                EventKind::Transition
            ]
        );
        let last = &events[2];
        assert_eq!(last.id, "n1-7-3");
        assert_eq!(
            (last.from.as_deref(), last.to.as_deref()),
            (Some("SECOND"), Some("ALONE"))
        );
        let steps: Vec<_> = last.cause.iter().map(|l| l.step).collect();
        assert_eq!(
            steps,
            [
                StepKind::Checker,
                StepKind::Decision,
                StepKind::Resources,
                StepKind::Script,
                StepKind::Result
            ]
        );
        assert_eq!(last.cause[2].result, Some(Outcome::Ok));
        assert_eq!(last.cause[3].result, Some(Outcome::Failed));
        assert!(last.cause[3].duration_ms.is_some());
        assert_eq!(last.result, Some(Outcome::Failed));
        assert_eq!(live.try_recv().unwrap().kind, EventKind::Checker);

        // Settling again without a change says nothing more.
        timeline.settled(State::Alone, "running alone");
        assert_eq!(bus.recent(None).len(), 3);
    }

    #[test]
    fn relayed_events_are_kept_once_and_found_by_id_or_time() {
        let bus = EventBus::new("n1", 1);
        bus.publish(Draft::new(EventKind::NodeUnreachable, "n2: no answer"));
        let mut other = bus.recent(None)[0].clone();
        other.id = "n2-1-1".into();
        other.time_ms += 5000;
        assert!(bus.add(other.clone()));
        assert!(!bus.add(other.clone()), "the same id twice");
        assert_eq!(bus.recent(Some(other.time_ms)).len(), 1);
        assert_eq!(bus.after("n1-1-1").unwrap(), vec![other]);
        assert!(bus.after("n9-1-1").is_none());
    }

    #[test]
    fn causes_that_lead_nowhere_are_bounded() {
        let bus = Arc::new(EventBus::new("n1", 1));
        let timeline = Timeline::new(bus.clone(), "web");
        for i in 0..20 {
            timeline.verdict("ping", &format!("flap {i}"));
        }
        timeline.transition(State::Alone, State::Wait, "resource missing");
        timeline.settled(State::Wait, "waiting");
        let last = bus.recent(None).pop().unwrap();
        assert_eq!(last.cause.len(), LOOSE_CAUSES + 2);
        assert_eq!(last.cause[0].what, "checker ping: flap 12");
    }

    #[test]
    fn events_are_parsed_across_chunks_and_comments_skipped() {
        let event = r#"{"id":"n2-1-4","time":"2026-12-07T19:00:00.000Z","time_ms":1,"node":"n2","kind":"checker","reason":"checker ping: up","cause":[]}"#;
        let text = format!(": keep-alive\n\nid: n2-1-4\ndata: {event}\n\n");
        let mut lines = SseReader::default();
        let (a, b) = text.as_bytes().split_at(30);
        assert!(lines.push(a).is_empty());
        let events = lines.push(b);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].as_ref().unwrap().id, "n2-1-4");
        assert!(lines.push(b"data: {not json\n\n")[0].is_err());
    }
}
