//! Named scenarios of the mirror state machine, one behaviour each, on a
//! lossless instant network (the random faults are in `simulation.rs`).

use std::time::{Duration, Instant};

use holdfast_config::DefaultPrimary;
use holdfast_membership::lease::{LeaseSettings, PeerCopy, WitnessCore};
use holdfast_membership::mirror::{MirrorModule, MirrorSettings, PeerData};
use holdfast_membership::module::{
    Action, Command, CommandError, Persistent, Script, ScriptOutcome, State,
};

const TIMEOUT: Duration = Duration::from_secs(1);
const STEP: Duration = Duration::from_millis(10);

struct Pair {
    nodes: [Option<MirrorModule>; 2],
    persistent: [Persistent; 2],
    settings: MirrorSettings,
    now: Instant,
    linked: bool,
    seq: u64,
    /// start_prim runs per node.
    start_prims: [usize; 2],
    /// The fencing script fails (its out-of-band interface is unreachable).
    fence_fails: bool,
    /// A witness, and whether each node reaches it (instantly, both ways).
    witness: Option<WitnessCore>,
    reaches_witness: [bool; 2],
    /// Every log line, with its node.
    logs: Vec<(usize, String)>,
    /// Per node, the epochs of its `PeerFenced` actions.
    fenced: [Vec<u64>; 2],
    /// Per node, how many times it booted (its incarnation).
    lives: [u64; 2],
}

impl Pair {
    fn new(failover: bool, default_primary: DefaultPrimary) -> Self {
        let settings = MirrorSettings {
            local: String::new(),
            peer: String::new(),
            failover,
            default_primary,
            swap_back: true,
            timeout: TIMEOUT,
            networks: 1,
            incarnation: 0,
            splitbrain: false,
            witness: None,
        };
        let mut pair = Self {
            nodes: [None, None],
            persistent: Default::default(),
            settings,
            now: Instant::now(),
            linked: true,
            seq: 0,
            start_prims: [0, 0],
            fence_fails: false,
            witness: None,
            reaches_witness: [true; 2],
            logs: Vec::new(),
            fenced: Default::default(),
            lives: [0; 2],
        };
        pair.boot(0);
        pair.boot(1);
        pair
    }

    fn boot(&mut self, i: usize) {
        let mut settings = self.settings.clone();
        settings.local = format!("node{}", i + 1);
        settings.peer = format!("node{}", 2 - i);
        self.lives[i] += 1;
        self.nodes[i] = Some(MirrorModule::new(
            settings,
            self.persistent[i].clone(),
            self.now,
        ));
    }

    fn node(&mut self, i: usize) -> &mut MirrorModule {
        self.nodes[i].as_mut().expect("node is up")
    }

    fn command(&mut self, i: usize, command: Command) -> Result<(), CommandError> {
        let now = self.now;
        let result = self.node(i).command(now, command);
        self.settle_actions();
        result
    }

    fn state(&self, i: usize) -> State {
        self.nodes[i].as_ref().expect("node is up").state()
    }

    /// Scripts finish at once; persisted state is kept for crashes.
    fn settle_actions(&mut self) {
        for _ in 0..100 {
            let mut progressed = false;
            for i in 0..2 {
                let Some(node) = self.nodes[i].as_mut() else {
                    continue;
                };
                for action in node.take_actions() {
                    match action {
                        Action::RunScript(run) => {
                            if run.script == Script::StartPrim {
                                self.start_prims[i] += 1;
                            }
                            let now = self.now;
                            let outcome = if run.script == Script::Fence && self.fence_fails {
                                ScriptOutcome::Failed("exit code 1".into())
                            } else {
                                ScriptOutcome::Success
                            };
                            self.nodes[i]
                                .as_mut()
                                .unwrap()
                                .script_finished(now, run.id, outcome);
                            progressed = true;
                        }
                        Action::Persist(p) => self.persistent[i] = p,
                        Action::Log { message, .. } => self.logs.push((i, message)),
                        Action::PeerFenced { epoch } => self.fenced[i].push(epoch),
                        Action::RequestLease {
                            id,
                            duration,
                            peer_copy,
                        } if self.reaches_witness[i] => {
                            let now = self.now;
                            let node = format!("node{}", i + 1);
                            if let Some(witness) = self.witness.as_mut() {
                                let stamp = (self.lives[i], id);
                                let decision =
                                    witness.request(now, "web", &node, stamp, duration, &peer_copy);
                                self.nodes[i]
                                    .as_mut()
                                    .unwrap()
                                    .lease_reply(now, id, decision);
                                progressed = true;
                            }
                        }
                        Action::ReleaseLease { id } if self.reaches_witness[i] => {
                            let node = format!("node{}", i + 1);
                            if let Some(witness) = self.witness.as_mut() {
                                witness.request(
                                    self.now,
                                    "web",
                                    &node,
                                    (self.lives[i], id),
                                    Duration::ZERO,
                                    &PeerCopy::Unknown,
                                );
                            }
                        }
                        _ => {}
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Advances time, exchanging heartbeats every step while linked.
    fn run(&mut self, duration: Duration) {
        let steps = duration.as_millis() / STEP.as_millis();
        for _ in 0..steps {
            self.now += STEP;
            self.seq += 1;
            let statuses: Vec<_> = self
                .nodes
                .iter()
                .map(|n| n.as_ref().map(|m| m.status()))
                .collect();
            for i in 0..2 {
                let now = self.now;
                let seq = self.seq;
                let Some(node) = self.nodes[i].as_mut() else {
                    continue;
                };
                match (&statuses[1 - i], self.linked) {
                    (Some(status), true) => node.heartbeat(now, 0, (0, seq), status.clone()),
                    _ => node.tick(now),
                }
            }
            self.settle_actions();
        }
    }
}

#[test]
fn first_start_elects_the_preferred_primary() {
    let mut pair = Pair::new(true, DefaultPrimary::Node("node2".into()));
    pair.command(0, Command::Start).unwrap();
    pair.command(1, Command::Start).unwrap();
    pair.run(TIMEOUT / 2);
    assert_eq!((pair.state(0), pair.state(1)), (State::Second, State::Prim));
    assert_eq!(pair.start_prims, [0, 1]);
}

#[test]
fn failover_off_waits_until_prim_is_forced() {
    let mut pair = Pair::new(false, DefaultPrimary::Alone);
    pair.command(0, Command::Start).unwrap();
    pair.command(1, Command::Start).unwrap();
    pair.run(TIMEOUT / 2);
    assert_eq!((pair.state(0), pair.state(1)), (State::Prim, State::Second));
    pair.nodes[0] = None; // crash of the primary
    pair.run(TIMEOUT * 2);
    assert_eq!(pair.state(1), State::Wait, "failover off: no takeover");
    assert!(pair.node(1).view().reason.contains("failover is off"));
    assert_eq!(pair.start_prims[1], 0);
    pair.command(1, Command::Prim).unwrap();
    assert_eq!(pair.state(1), State::Alone);
    assert_eq!(pair.start_prims[1], 1);
}

#[test]
fn a_node_that_returns_after_failover_swaps_back_when_preferred() {
    let mut pair = Pair::new(true, DefaultPrimary::Node("node1".into()));
    pair.command(1, Command::Start).unwrap();
    pair.run(TIMEOUT * 2);
    assert_eq!(pair.state(1), State::Alone, "alone after the timeout");
    pair.command(0, Command::Start).unwrap();
    pair.run(TIMEOUT);
    assert_eq!(
        (pair.state(0), pair.state(1)),
        (State::Prim, State::Second),
        "swapped back to node1"
    );
    assert_eq!(pair.start_prims, [1, 1]);
}

#[test]
fn refused_commands_say_why_and_change_nothing() {
    let mut pair = Pair::new(true, DefaultPrimary::Alone);
    pair.command(0, Command::Start).unwrap();
    pair.command(1, Command::Start).unwrap();
    pair.run(TIMEOUT / 2);
    let before = pair.node(1).status();
    assert_eq!(
        pair.command(1, Command::Start),
        Err(CommandError::AlreadyStarted(State::Second))
    );
    assert_eq!(
        pair.command(1, Command::Prim),
        Err(CommandError::PeerIsPrimary {
            peer: "node1".into(),
            state: State::Prim
        })
    );
    assert_eq!(pair.node(1).status(), before);
    pair.linked = false;
    pair.run(TIMEOUT * 2);
    let err = pair.command(0, Command::Swap).unwrap_err();
    assert!(
        err.to_string().contains("swap needs a PRIM and a SECOND"),
        "{err}"
    );
}

#[test]
fn a_stopped_peer_lets_a_starting_node_start_without_waiting_for_the_timeout() {
    let mut pair = Pair::new(true, DefaultPrimary::Node("node2".into()));
    pair.command(0, Command::Start).unwrap();
    pair.run(TIMEOUT / 4);
    assert_eq!(
        pair.state(0),
        State::Alone,
        "peer STOP: no need to wait the timeout"
    );
    assert_eq!(pair.state(1), State::Stop);
}

#[test]
fn an_incomplete_copy_is_never_promoted_the_module_waits_and_says_why() {
    let mut pair = Pair::new(true, DefaultPrimary::Alone);
    pair.command(0, Command::Start).unwrap();
    pair.command(1, Command::Start).unwrap();
    pair.run(TIMEOUT / 2);
    assert_eq!((pair.state(0), pair.state(1)), (State::Prim, State::Second));
    // The data layer: node2 is reintegrating.
    let now = pair.now;
    pair.node(1).data_state(now, false);
    // No swap to an incomplete copy.
    assert_eq!(pair.command(1, Command::Swap), Ok(()));
    pair.run(TIMEOUT / 2);
    assert_eq!(
        (pair.state(0), pair.state(1)),
        (State::Prim, State::Second),
        "swap waits for the reintegration"
    );
    pair.nodes[0] = None; // the primary crashes
    pair.run(TIMEOUT * 2);
    assert_eq!(pair.state(1), State::Wait);
    assert!(
        pair.node(1).view().reason.contains("may not be up to date"),
        "{}",
        pair.node(1).view().reason
    );
    assert_eq!(
        pair.start_prims[1], 0,
        "start_prim never ran on the incomplete copy"
    );
    assert!(pair.node(1).waits_for_administrator());
    // The old primary returns: it has the data, it becomes primary again.
    pair.boot(0);
    pair.command(0, Command::Start).unwrap();
    pair.run(TIMEOUT);
    assert_eq!((pair.state(0), pair.state(1)), (State::Prim, State::Second));
}

#[test]
fn a_failed_fencing_script_blocks_the_takeover() {
    let mut pair = Pair::new(true, DefaultPrimary::Alone);
    pair.command(0, Command::Start).unwrap();
    pair.command(1, Command::Start).unwrap();
    pair.run(TIMEOUT / 2);
    assert_eq!((pair.state(0), pair.state(1)), (State::Prim, State::Second));
    pair.nodes[0] = None; // the primary goes silent
    pair.fence_fails = true;
    pair.run(TIMEOUT * 2);
    assert_eq!(pair.state(1), State::Wait, "no takeover without fencing");
    assert_eq!(pair.start_prims[1], 0);
    assert!(
        pair.node(1).view().reason.contains("fencing script failed"),
        "{}",
        pair.node(1).view().reason
    );
    // The administrator knows node1 is down.
    pair.command(1, Command::Prim).unwrap();
    assert_eq!(pair.state(1), State::Alone);
}

/// The split-brain checker (SafeKit's `<splitbrain>`): in a partition, the
/// side that pings the tie-breaker keeps or takes the primary role, the
/// other stops its application and waits; both return when heartbeats do.
#[test]
fn the_splitbrain_checker_gives_the_partition_to_the_side_that_pings() {
    for primary_reaches in [true, false] {
        let mut pair = Pair::new(true, DefaultPrimary::Alone);
        pair.settings.splitbrain = true;
        start_rebooted(&mut pair);
        let now = pair.now;
        let cut_off = usize::from(primary_reaches);
        pair.node(cut_off).splitbrain_witness(now, false);
        pair.linked = false;
        pair.run(TIMEOUT * 3);
        let keeper = 1 - cut_off;
        assert_eq!(pair.state(keeper), State::Alone, "{primary_reaches}");
        assert_eq!(pair.state(cut_off), State::Wait, "{primary_reaches}");
        assert!(!pair.node(cut_off).app_active());
        assert!(pair
            .node(cut_off)
            .view()
            .reason
            .contains("split-brain witness"));
        pair.linked = true;
        pair.run(TIMEOUT);
        let states = [pair.state(0), pair.state(1)];
        assert!(
            states.contains(&State::Prim) && states.contains(&State::Second),
            "{states:?}"
        );
        assert!(
            pair.node(keeper).app_active(),
            "the keeper keeps the service"
        );
    }
}

const LEASE: Duration = Duration::from_secs(2);

/// A pair with a witness (past its start-up quiet time), started: node1
/// PRIM, node2 SECOND.
fn pair_with_witness() -> Pair {
    let mut pair = Pair::new(true, DefaultPrimary::Alone);
    pair.settings.witness = Some(LeaseSettings {
        duration: LEASE,
        renew: STEP * 10,
        stop_budget: Duration::from_millis(300),
    });
    pair.witness = Some(WitnessCore::new(
        LEASE,
        pair.now - LEASE,
        Default::default(),
    ));
    start_rebooted(&mut pair);
    pair
}

/// Boots both nodes again (after a change of settings) and starts them:
/// node1 PRIM, node2 SECOND.
fn start_rebooted(pair: &mut Pair) {
    pair.boot(0);
    pair.boot(1);
    pair.command(0, Command::Start).unwrap();
    pair.command(1, Command::Start).unwrap();
    pair.run(TIMEOUT / 2);
    assert_eq!((pair.state(0), pair.state(1)), (State::Prim, State::Second));
}

/// Runs `duration`, checking at every step that the two applications never
/// run at once; returns the first step (from now) at which node 2's
/// application started, if it did.
fn run_never_both(pair: &mut Pair, duration: Duration) -> Option<Duration> {
    let start = pair.now;
    let mut started = None;
    for _ in 0..duration.as_millis() / STEP.as_millis() {
        pair.run(STEP);
        let active: Vec<bool> = (0..2).map(|i| pair.node(i).app_active()).collect();
        assert!(
            !(active[0] && active[1]),
            "two applications at {:?}",
            pair.now - start
        );
        if active[1] && started.is_none() {
            started = Some(pair.now - start);
        }
    }
    started
}

#[test]
fn with_a_witness_an_isolated_primary_stops_before_the_other_takes_over() {
    let mut pair = pair_with_witness();
    // node1 loses its peer and the witness.
    pair.linked = false;
    pair.reaches_witness[0] = false;
    let took_over = run_never_both(&mut pair, LEASE * 3).expect("node2 takes over");
    assert!(took_over >= TIMEOUT, "not before the heartbeat timeout");
    assert_eq!((pair.state(0), pair.state(1)), (State::Wait, State::Alone));
    assert!(pair
        .node(0)
        .view()
        .reason
        .contains("neither node2 nor the witness"));
    // Back together: node2 keeps the service, node1 joins as SECOND.
    pair.linked = true;
    pair.reaches_witness[0] = true;
    run_never_both(&mut pair, TIMEOUT);
    assert_eq!((pair.state(0), pair.state(1)), (State::Second, State::Prim));
}

#[test]
fn with_a_witness_a_partition_between_the_nodes_changes_nothing() {
    let mut pair = pair_with_witness();
    pair.linked = false;
    assert_eq!(run_never_both(&mut pair, LEASE * 3), None);
    assert_eq!(pair.state(0), State::Alone, "the primary keeps its lease");
    assert!(pair.node(0).app_active());
    assert_eq!(pair.start_prims, [1, 0]);
    pair.linked = true;
    run_never_both(&mut pair, TIMEOUT);
    assert_eq!((pair.state(0), pair.state(1)), (State::Prim, State::Second));
}

#[test]
fn with_a_witness_down_the_primary_goes_on_while_its_peer_hears_it_and_says_so() {
    let mut pair = pair_with_witness();
    pair.reaches_witness = [false, false];
    assert_eq!(run_never_both(&mut pair, LEASE * 3), None);
    assert_eq!((pair.state(0), pair.state(1)), (State::Prim, State::Second));
    let lapse =
        "no lease from the witness: the application goes on only while node2 hears this node";
    assert!(
        pair.logs.iter().any(|(i, m)| *i == 0 && m == lapse),
        "{:?}",
        pair.logs
    );
    // Then the peer goes too: nothing is left to hold the primary role on.
    pair.linked = false;
    assert_eq!(
        run_never_both(&mut pair, LEASE * 3),
        None,
        "no lease for node2 either"
    );
    assert_eq!(pair.state(0), State::Wait);
    assert!(!pair.node(0).app_active());
    // The witness is back: the lease goes to one node, the other joins.
    pair.reaches_witness = [true, true];
    pair.linked = true;
    run_never_both(&mut pair, LEASE * 2);
    let states = [pair.state(0), pair.state(1)];
    assert!(
        states.contains(&State::Prim) && states.contains(&State::Second),
        "{states:?}"
    );
}

#[test]
fn without_a_witness_a_peer_copy_is_fenced_at_once() {
    let mut pair = Pair::new(true, DefaultPrimary::Alone);
    pair.command(0, Command::Start).unwrap();
    pair.command(1, Command::Start).unwrap();
    pair.run(TIMEOUT / 2);
    let now = pair.now;
    pair.node(0).peer_data(now, PeerData::Outdated { epoch: 1 });
    pair.settle_actions();
    assert_eq!(pair.fenced, [vec![1], vec![]]);
}

/// The primary loses its peer (not the witness) and changes data alone:
/// replication waits for the witness to record the peer's copy outdated.
/// After that the peer never takes over — even once the primary is gone —
/// until the primary has resynchronised it.
#[test]
fn with_a_witness_an_outdated_copy_never_takes_over() {
    let mut pair = pair_with_witness();
    pair.linked = false;
    let now = pair.now;
    pair.node(0).peer_data(now, PeerData::Outdated { epoch: 7 });
    pair.settle_actions();
    assert_eq!(
        pair.fenced[0],
        vec![7],
        "granted at once, not at the renew pace"
    );
    assert_eq!(run_never_both(&mut pair, LEASE), None);
    // The primary crashes: its lease runs out, and still node2 waits.
    pair.nodes[0] = None;
    pair.run(LEASE * 3);
    assert!(!pair.state(1).is_primary() && !pair.node(1).app_active());
    let refusal = "this node's copy of the replicated data is outdated (node1 changed it";
    assert!(
        pair.logs
            .iter()
            .any(|(i, m)| *i == 1 && m.contains(refusal)),
        "{:?}",
        pair.logs
    );
    // node1 returns, resynchronises node2 and says so: node2 may take over.
    pair.linked = true;
    pair.boot(0);
    pair.command(0, Command::Start).unwrap();
    run_never_both(&mut pair, LEASE * 2);
    assert_eq!(
        (pair.state(0), pair.state(1)),
        (State::Prim, State::Second),
        "{}",
        pair.node(0).view().reason
    );
    let now = pair.now;
    pair.node(1).data_state(now, true);
    pair.node(0).peer_data(now, PeerData::Current);
    pair.settle_actions();
    pair.nodes[0] = None;
    pair.run(LEASE * 3);
    assert_eq!(pair.state(1), State::Alone, "node2 takes over once current");
}

#[test]
fn a_secondary_says_what_its_primary_is_now() {
    let mut pair = Pair::new(true, DefaultPrimary::Alone);
    pair.command(0, Command::Start).unwrap();
    pair.run(TIMEOUT * 2);
    assert_eq!(pair.state(0), State::Alone);
    pair.command(1, Command::Start).unwrap();
    pair.run(TIMEOUT);
    assert_eq!((pair.state(0), pair.state(1)), (State::Prim, State::Second));
    // It joined an ALONE primary; its reason follows the primary's state.
    let reason = pair.node(1).view().reason;
    assert!(
        reason.contains("(PRIM)") && !reason.contains("ALONE"),
        "{reason}"
    );
}
