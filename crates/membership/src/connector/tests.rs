//! The policy's decisions, one table row per situation: the inputs in
//! order, each with the decisions it must bring (what the link, the
//! connection and the fence are told; logs, problems and what is shown
//! are left to the tests after the table).

use std::time::{Duration, Instant};

use super::*;
use ConnectorAction::{
    Close, Connect, Disconnect, Hold, PeerCurrent, PeerOutdated, PeerUnknown, Track,
    TrackUntilUnmounted,
};
use OnSecondaryFailure::{Block, Degrade};

const ACK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum In {
    Second(bool),
    Resynchronised,
    /// An attempt failed; `true`: after its resynchronisation began.
    Failed(bool),
    Lost,
    /// The oldest unacknowledged change, sent at this many ms.
    Unacknowledged(Option<u64>),
    Fenced,
    Tick,
    Release,
}
use In::*;

fn settings(on_failure: OnSecondaryFailure, witness: bool) -> ConnectorSettings {
    ConnectorSettings {
        directory: "/srv/data".into(),
        on_failure,
        ack_timeout: ACK_TIMEOUT,
        witness,
    }
}

/// Both policies' timed connect.
fn connect(on_failure: OnSecondaryFailure) -> ConnectorAction {
    Connect {
        send_timeout: (on_failure == Degrade).then_some(ACK_TIMEOUT),
    }
}

fn decisions(actions: Vec<ConnectorAction>) -> Vec<ConnectorAction> {
    actions
        .into_iter()
        .filter(|a| {
            !matches!(
                a,
                ConnectorAction::Log(..) | ConnectorAction::Problem(_) | ConnectorAction::Show(_)
            )
        })
        .collect()
}

fn feed(core: &mut ConnectorCore, t0: Instant, at: u64, input: In) {
    let now = t0 + Duration::from_millis(at);
    match input {
        Second(second) => core.peer_second(now, second),
        Resynchronised => core.resynchronised(now),
        Failed(resynchronising) => core.session_failed(now, "refused".into(), resynchronising),
        Lost => core.connection_lost(now, "connection reset".into()),
        Unacknowledged(sent) => {
            core.unacknowledged(now, sent.map(|ms| t0 + Duration::from_millis(ms)))
        }
        Fenced => core.fenced(now),
        Tick => core.tick(now),
        Release => core.release(),
    }
}

type Row = (
    &'static str,
    OnSecondaryFailure,
    bool,
    &'static [(u64, In, &'static [ConnectorAction])],
);

/// `Connect` depends on the policy: the rows name it through this.
const C: ConnectorAction = Connect { send_timeout: None };
/// The secondary is told its copy is incomplete, then disconnected.
const LEFT: ConnectorAction = Disconnect { left_behind: true };
const GONE: ConnectorAction = Disconnect { left_behind: false };

#[test]
fn decisions_by_situation() {
    let rows: &[Row] = &[
        (
            "degrade: mirrors while SECOND, goes alone at once when the connection breaks",
            Degrade,
            false,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (20, Lost, &[GONE, Track, C]),
            ],
        ),
        (
            "witness: nothing the peer lacks is acknowledged before the fence",
            Degrade,
            true,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (20, Lost, &[GONE, PeerOutdated, Hold]),
                (30, Tick, &[]),
                (40, Second(false), &[]),
                (50, Fenced, &[Track]),
            ],
        ),
        (
            "witness: no new attempt while waiting for the fence, one at once after",
            Degrade,
            true,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (20, Lost, &[GONE, PeerOutdated, Hold]),
                (2000, Tick, &[]),
                (2010, Fenced, &[Track, C]),
            ],
        ),
        (
            "witness: mounted held with the peer's copy outdated; a lost peer goes alone once fenced",
            Block,
            true,
            &[(0, Second(false), &[]), (10, Fenced, &[Track])],
        ),
        (
            "witness: a fence granted before the loss is not asked again",
            Degrade,
            true,
            &[
                (0, Second(true), &[C]),
                (5, Fenced, &[]),
                (10, Failed(false), &[Track]),
                (510, Tick, &[C]),
                (520, Failed(true), &[Track]),
            ],
        ),
        (
            "witness: a resynchronisation ends the wait for the fence of the mount",
            Degrade,
            true,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (20, Fenced, &[]),
                (30, Lost, &[GONE, PeerOutdated, Hold]),
            ],
        ),
        (
            "block: a live secondary that fails holds changes, and is resynchronised at once",
            Block,
            false,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (20, Lost, &[GONE, Hold, C]),
                (30, Resynchronised, &[PeerCurrent]),
            ],
        ),
        (
            "block: a failed attempt keeps holding and retries after RETRY",
            Block,
            false,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (20, Lost, &[GONE, Hold, C]),
                (30, Failed(false), &[]),
                (529, Tick, &[]),
                (530, Tick, &[C]),
                (540, Failed(true), &[]),
            ],
        ),
        (
            "block: held changes go alone once the secondary is declared lost",
            Block,
            false,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (20, Lost, &[GONE, Hold, C]),
                (30, Second(false), &[]),
                (40, Failed(false), &[Track]),
            ],
        ),
        (
            "block: a secondary leaving SECOND ends mirroring, alone",
            Block,
            false,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (20, Second(false), &[GONE, Track]),
            ],
        ),
        (
            "degrade: a change unacknowledged for ack_timeout leaves the secondary behind",
            Degrade,
            false,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (100, Unacknowledged(Some(100)), &[]),
                (1099, Tick, &[]),
                (1100, Tick, &[LEFT, Track, C]),
            ],
        ),
        (
            "degrade: acknowledged in time, mirroring goes on",
            Degrade,
            false,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (100, Unacknowledged(Some(100)), &[]),
                (600, Unacknowledged(Some(500)), &[]),
                (1200, Unacknowledged(None), &[]),
            ],
        ),
        (
            "block: a late secondary is waited for, not left",
            Block,
            false,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (100, Unacknowledged(Some(100)), &[]),
                (5000, Unacknowledged(Some(100)), &[]),
            ],
        ),
        (
            "degrade: a failed resynchronisation falls back to tracking, retried",
            Degrade,
            false,
            &[
                (0, Second(true), &[C]),
                (10, Failed(true), &[]),
                (510, Tick, &[C]),
            ],
        ),
        (
            "release while mirroring, no witness: tracks",
            Block,
            false,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (20, Release, &[TrackUntilUnmounted, PeerUnknown]),
                (30, Lost, &[]),
                (40, Second(true), &[]),
            ],
        ),
        (
            "release while mirroring, witness: closed (the peer may take over)",
            Degrade,
            true,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (20, Release, &[Close, PeerUnknown]),
            ],
        ),
        (
            "release while holding: closed",
            Block,
            false,
            &[
                (0, Second(true), &[C]),
                (10, Resynchronised, &[PeerCurrent]),
                (20, Lost, &[GONE, Hold, C]),
                (30, Failed(false), &[]),
                (40, Release, &[Close, PeerUnknown]),
            ],
        ),
        (
            "release while waiting for the fence: closed",
            Degrade,
            true,
            &[(0, Second(false), &[]), (10, Release, &[Close, PeerUnknown])],
        ),
        (
            "release alone once fenced: tracks",
            Degrade,
            true,
            &[
                (0, Second(false), &[]),
                (10, Fenced, &[Track]),
                (20, Release, &[TrackUntilUnmounted, PeerUnknown]),
            ],
        ),
        (
            "release during a resynchronisation whose changes wait: closed",
            Block,
            false,
            &[(0, Second(true), &[C]), (10, Release, &[Close, PeerUnknown])],
        ),
        (
            "release during a resynchronisation, degrade: tracks",
            Degrade,
            false,
            &[(0, Second(true), &[C]), (10, Release, &[TrackUntilUnmounted, PeerUnknown])],
        ),
    ];
    let t0 = Instant::now();
    for (name, on_failure, witness, steps) in rows {
        let mut core = ConnectorCore::new(settings(*on_failure, *witness));
        assert_eq!(core.start().held, *witness, "{name}: at the mount");
        assert_eq!(core.take_actions(), vec![], "{name}: at the mount");
        for (at, input, want) in steps.iter() {
            feed(&mut core, t0, *at, *input);
            let want: Vec<_> = want
                .iter()
                .map(|a| {
                    if *a == C {
                        connect(*on_failure)
                    } else {
                        a.clone()
                    }
                })
                .collect();
            assert_eq!(
                decisions(core.take_actions()),
                want,
                "{name}: at {at} ms, {input:?}"
            );
        }
    }
}

#[test]
fn failed_changes_wait_unless_degrading_without_a_witness() {
    for (on_failure, witness, want) in [
        (Degrade, false, FailedChange::Succeed),
        (Degrade, true, FailedChange::Wait),
        (Block, false, FailedChange::Wait),
        (Block, true, FailedChange::Wait),
    ] {
        let core = ConnectorCore::new(settings(on_failure, witness));
        assert_eq!(
            core.start().failed_changes,
            want,
            "{on_failure:?}, witness {witness}"
        );
    }
}

/// Mirroring from `t0` with `on_failure`.
fn mirroring(on_failure: OnSecondaryFailure, t0: Instant) -> ConnectorCore {
    let mut core = ConnectorCore::new(settings(on_failure, false));
    core.peer_second(t0, true);
    core.resynchronised(t0);
    core.take_actions();
    core
}

#[test]
fn a_late_secondary_under_block_is_reported_then_cleared() {
    let t0 = Instant::now();
    let mut core = mirroring(Block, t0);
    let sent = t0 + Duration::from_millis(100);
    core.unacknowledged(sent, Some(sent));
    assert_eq!(core.next_deadline(), Some(sent + ACK_TIMEOUT / 4));
    core.unacknowledged(sent + ACK_TIMEOUT, Some(sent));
    let problem = |actions: Vec<ConnectorAction>| {
        actions.into_iter().find_map(|a| match a {
            ConnectorAction::Problem(p) => Some(p),
            _ => None,
        })
    };
    let reported = problem(core.take_actions()).expect("a problem");
    assert!(
        reported.as_ref().is_some_and(|p| p.contains(
            "within ack_timeout = 1s: writes wait for it (on_secondary_failure = block)"
        )),
        "{reported:?}"
    );
    core.unacknowledged(sent + ACK_TIMEOUT * 2, Some(sent));
    assert_eq!(core.take_actions(), vec![], "reported once");
    core.unacknowledged(sent + ACK_TIMEOUT * 3, None);
    assert_eq!(problem(core.take_actions()), Some(None), "cleared");
}

#[test]
fn the_next_look_while_mirroring_is_the_oldest_change_deadline_or_sooner() {
    let t0 = Instant::now();
    let mut core = mirroring(Degrade, t0);
    assert_eq!(core.next_deadline(), Some(t0 + ACK_TIMEOUT / 4));
    let sent = t0 + Duration::from_millis(10);
    let looked = t0 + Duration::from_millis(900);
    core.unacknowledged(looked, Some(sent));
    assert_eq!(core.next_deadline(), Some(sent + ACK_TIMEOUT));
}

#[test]
fn messages_name_the_directory_and_the_policy() {
    let t0 = Instant::now();
    let mut core = mirroring(Degrade, t0);
    core.unacknowledged(t0, Some(t0));
    core.tick(t0 + ACK_TIMEOUT);
    let logs: Vec<String> = core
        .take_actions()
        .into_iter()
        .filter_map(|a| match a {
            ConnectorAction::Log(_, m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(
        logs,
        ["replication of /srv/data to the secondary lost (no acknowledgement within ack_timeout = 1s): tracking changes (on_secondary_failure = degrade)"]
    );
}

#[test]
fn a_repeated_failure_is_logged_once_and_shown_each_time() {
    let t0 = Instant::now();
    let mut core = ConnectorCore::new(settings(Degrade, false));
    core.take_actions();
    core.peer_second(t0, true);
    let mut logged = 0;
    for attempt in 0..3u32 {
        let now = t0 + RETRY * attempt;
        core.tick(now);
        assert!(core.connecting(), "attempt {attempt}");
        core.session_failed(now, "cannot connect".into(), false);
        for a in core.take_actions() {
            match a {
                ConnectorAction::Log(..) => logged += 1,
                ConnectorAction::Problem(p) => assert_eq!(p.as_deref(), Some("cannot connect")),
                _ => {}
            }
        }
    }
    assert_eq!(logged, 1);
}
