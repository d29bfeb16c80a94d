//! `holdfast events`: the cluster's timeline from this node's daemon
//! (which relays every other node's): the recent events, then, with
//! `--follow`, new ones as they happen.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use holdfast_daemon::client::ApiClient;
use holdfast_daemon::events::{Event, SseReader};

use crate::block;

pub fn run(
    client: &ApiClient,
    follow: bool,
    since: Option<Duration>,
    json: bool,
) -> Result<ExitCode> {
    let since_ms = since
        .map(|ago| SystemTime::now() - ago)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let show = |event: &Event| match json {
        true => println!("{}", serde_json::to_string(event).expect("plain data")),
        false => print(event),
    };
    if !follow {
        let mut events: Vec<Event> =
            block(client.get(&format!("/v1/events/recent?since={since_ms}")))?;
        events.sort_by_key(|e| e.time_ms);
        events.iter().for_each(show);
        return Ok(ExitCode::SUCCESS);
    }
    let mut reader = SseReader::default();
    block(
        client.stream(&format!("/v1/events?since={since_ms}"), |bytes| {
            for event in reader.push(bytes) {
                match event {
                    Ok(event) => show(&event),
                    Err(e) => eprintln!("holdfast: an event that does not parse: {e}"),
                }
            }
            true
        }),
    )?;
    bail!("the daemon ended the event stream")
}

/// One line per event, then its cause chain indented.
fn print(event: &Event) {
    let module = event.module.as_deref().unwrap_or("-");
    let change = match (&event.from, &event.to) {
        (Some(from), Some(to)) => format!(" {from} -> {to}"),
        _ => String::new(),
    };
    let took = event
        .duration_ms
        .map_or_else(String::new, |ms| format!(" in {ms} ms"));
    let result = event
        .result
        .map_or_else(String::new, |r| format!(" [{}]", name(r)));
    println!(
        "{} {:<8} {:<12} {}{change}{took}{result}: {}",
        event.time,
        event.node,
        module,
        name(event.kind),
        event.reason
    );
    if event.kind == holdfast_daemon::events::EventKind::Transition {
        for link in &event.cause {
            let took = link
                .duration_ms
                .map_or_else(String::new, |ms| format!(" ({ms} ms)"));
            let failed = match link.result {
                Some(holdfast_daemon::events::Outcome::Failed) => " FAILED",
                _ => "",
            };
            println!(
                "    +{:>6} ms {}: {}{took}{failed}",
                link.at_ms,
                name(link.step),
                link.what
            );
        }
    }
}

/// A value's name in the JSON schema (`transition_started`, `failed`).
fn name(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}
