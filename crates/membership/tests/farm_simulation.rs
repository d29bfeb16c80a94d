//! Deterministic simulation of farm modules of 2..5 nodes over random fault
//! schedules (crashes, restarts, partitions between pairs, loss, stop/start),
//! in virtual time. Invariant: whenever the network has been whole and no
//! node in transition for longer than the heartbeat timeout, the UP nodes'
//! buckets are disjoint, cover all 256, and follow the power weights
//! (`BucketMap` of the UP set). At the end, with everything healed and
//! started, every node is UP and the buckets are shared among all.
//!
//! Reproduce: `HOLDFAST_SIM_SEED=<seed> cargo test -p holdfast-membership --test farm_simulation`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use holdfast_membership::farm::buckets::{BucketMap, Member};
use holdfast_membership::farm::{FarmAction, FarmModule, FarmSettings, FarmStatus};
use holdfast_membership::module::{Action, Command, ScriptOutcome, State};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::EventQueue;

mod support;

const PULSE_MS: u64 = 100;
const TIMEOUT_MS: u64 = 1000;
const SCRIPT_MAX_MS: u64 = 300;
const HORIZON_MS: u64 = 40_000;
const SETTLE_MS: u64 = TIMEOUT_MS + 3 * PULSE_MS + 4 * SCRIPT_MAX_MS;

enum Ev {
    Pulse {
        node: usize,
        life: u64,
    },
    Tick {
        node: usize,
        life: u64,
    },
    Deliver {
        to: usize,
        from: usize,
        stamp: (u64, u64),
        status: FarmStatus,
    },
    ScriptDone {
        node: usize,
        life: u64,
        id: u64,
    },
    Crash(usize),
    Restart(usize),
    Admin {
        node: usize,
        command: Command,
    },
    Cut {
        a: usize,
        b: usize,
        cut: bool,
    },
}

struct Node {
    module: Option<FarmModule>,
    life: u64,
    started: bool,
}

struct Sim {
    rng: StdRng,
    t0: Instant,
    q: EventQueue<Ev>,
    nodes: Vec<Node>,
    members: Vec<(String, u32)>,
    cut: Vec<Vec<bool>>,
    last_change: u64,
    seed: u64,
    /// The UP set last found correct.
    checked: Option<Vec<Member>>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(2..=5);
        let members = (0..n)
            .map(|i| (format!("node{}", i + 1), rng.gen_range(1..=3)))
            .collect();
        let mut sim = Self {
            rng,
            t0: Instant::now(),
            q: EventQueue::new(),
            nodes: Vec::new(),
            members,
            cut: vec![vec![false; n]; n],
            last_change: 0,
            seed,
            checked: None,
        };
        for i in 0..n {
            sim.nodes.push(Node {
                module: None,
                life: 0,
                started: false,
            });
            sim.boot(i);
            let at = sim.rng.gen_range(0..TIMEOUT_MS);
            sim.schedule(
                at,
                Ev::Admin {
                    node: i,
                    command: Command::Start,
                },
            );
        }
        sim
    }

    fn schedule(&mut self, delay: u64, ev: Ev) {
        self.q.schedule(delay, ev);
    }

    fn boot(&mut self, i: usize) {
        let settings = FarmSettings {
            local: self.members[i].0.clone(),
            members: self.members.clone(),
            timeout: Duration::from_millis(TIMEOUT_MS),
        };
        let now = self.t0 + Duration::from_millis(self.q.now());
        self.nodes[i].module = Some(FarmModule::new(settings, now));
        let life = self.nodes[i].life;
        self.schedule(0, Ev::Pulse { node: i, life });
    }

    fn fail(&self, what: &str) -> ! {
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.module {
                Some(m) => format!("{} ({} buckets)", m.state(), m.buckets().len()),
                None => "down".into(),
            })
            .collect();
        panic!(
            "seed {}: at {} ms: {what}\n  nodes: {states:?}\n  reproduce with HOLDFAST_SIM_SEED={}",
            self.seed,
            self.q.now(),
            self.seed
        )
    }

    fn input(&mut self, i: usize, f: impl FnOnce(&mut FarmModule, Instant)) {
        let now = self.t0 + Duration::from_millis(self.q.now());
        let Some(module) = self.nodes[i].module.as_mut() else {
            return;
        };
        f(module, now);
        let actions = module.take_actions();
        let status = module.status();
        let deadline = module.next_deadline();
        let life = self.nodes[i].life;
        for action in actions {
            match action {
                FarmAction::Module(Action::RunScript(run)) => {
                    let took = self.rng.gen_range(0..=SCRIPT_MAX_MS);
                    self.schedule(
                        took,
                        Ev::ScriptDone {
                            node: i,
                            life,
                            id: run.id,
                        },
                    );
                }
                FarmAction::Module(Action::SendHeartbeat) => self.send(i, status),
                FarmAction::Module(Action::Transition { reason, .. }) if reason.is_empty() => {
                    self.fail("a transition without a reason")
                }
                FarmAction::Module(_) | FarmAction::ProgramBuckets(_) => {}
            }
        }
        if let Some(deadline) = deadline {
            self.schedule(
                deadline.saturating_duration_since(now).as_millis() as u64,
                Ev::Tick { node: i, life },
            );
        }
    }

    fn send(&mut self, from: usize, status: FarmStatus) {
        for to in 0..self.nodes.len() {
            if to == from || self.cut[from][to] || self.rng.gen_bool(0.05) {
                continue;
            }
            let stamp = (self.nodes[from].life, self.q.seq());
            let delay = self.rng.gen_range(0..=5);
            self.schedule(
                delay,
                Ev::Deliver {
                    to,
                    from,
                    stamp,
                    status,
                },
            );
        }
    }

    fn random_fault(&mut self) {
        let n = self.nodes.len();
        let at = self.rng.gen_range(0..HORIZON_MS);
        let node = self.rng.gen_range(0..n);
        let other = (node + self.rng.gen_range(1..n)) % n;
        let ev = match self.rng.gen_range(0..6) {
            0 => Ev::Crash(node),
            1 => Ev::Restart(node),
            2 => Ev::Cut {
                a: node,
                b: other,
                cut: true,
            },
            3 => Ev::Cut {
                a: node,
                b: other,
                cut: false,
            },
            4 => Ev::Admin {
                node,
                command: Command::Stop,
            },
            _ => Ev::Admin {
                node,
                command: Command::Start,
            },
        };
        self.schedule(at, ev);
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Pulse { node, life } if life == self.nodes[node].life => {
                if let Some(status) = self.nodes[node].module.as_ref().map(FarmModule::status) {
                    self.send(node, status);
                    self.schedule(PULSE_MS, Ev::Pulse { node, life });
                    self.input(node, |m, now| m.tick(now));
                }
            }
            Ev::Tick { node, life } if life == self.nodes[node].life => {
                self.input(node, |m, now| m.tick(now))
            }
            Ev::Deliver {
                to,
                from,
                stamp,
                status,
            } => {
                let name = self.members[from].0.clone();
                self.input(to, |m, now| m.heartbeat(now, &name, stamp, status));
            }
            Ev::ScriptDone { node, life, id } if life == self.nodes[node].life => self
                .input(node, |m, now| {
                    m.script_finished(now, id, ScriptOutcome::Success)
                }),
            Ev::Crash(node) if self.nodes[node].module.is_some() => {
                self.nodes[node].module = None;
                self.nodes[node].life += 1;
                self.last_change = self.q.now();
            }
            Ev::Restart(node) if self.nodes[node].module.is_none() => {
                self.boot(node);
                if self.nodes[node].started {
                    self.input(node, |m, now| {
                        m.command(now, Command::Start).expect("start at boot")
                    });
                }
            }
            Ev::Admin { node, command } => {
                if command == Command::Start || command == Command::Stop {
                    self.nodes[node].started = command == Command::Start;
                }
                // Refusals (already started...) are fine here.
                self.input(node, |m, now| {
                    let _ = m.command(now, command);
                });
            }
            Ev::Cut { a, b, cut } => {
                self.cut[a][b] = cut;
                self.cut[b][a] = cut;
                self.last_change = self.q.now();
            }
            _ => {}
        }
    }

    /// The invariant, when the farm had time to settle.
    fn check(&mut self) {
        let whole = self.cut.iter().all(|row| row.iter().all(|c| !c));
        let settled = self
            .nodes
            .iter()
            .all(|n| n.module.as_ref().is_none_or(|m| !m.transient()));
        if !whole || !settled || self.q.now() < self.last_change + SETTLE_MS {
            return;
        }
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .module
                    .as_ref()
                    .is_some_and(|m| m.state() == State::Up)
            })
            .collect();
        if up.is_empty() {
            return;
        }
        let members: Vec<Member> = up
            .iter()
            .map(|&i| Member {
                name: self.members[i].0.clone(),
                power: self.members[i].1,
            })
            .collect();
        // Checked once per settled UP set (the check is costly).
        if self.checked.as_ref() == Some(&members) {
            return;
        }
        let expected = BucketMap::assign(&members).expect("members");
        let mut seen = BTreeSet::new();
        for &i in &up {
            let buckets = self.nodes[i].module.as_ref().unwrap().buckets();
            if buckets != expected.buckets_of(&self.members[i].0) {
                self.fail(&format!(
                    "{} serves buckets other than the assignment of the UP set",
                    self.members[i].0
                ));
            }
            if !seen.is_disjoint(&buckets) {
                self.fail("a bucket is served twice");
            }
            seen.extend(buckets);
        }
        if seen.len() != 256 {
            self.fail(&format!(
                "{} buckets are served by nobody",
                256 - seen.len()
            ));
        }
        self.checked = Some(members);
    }

    fn run_until(&mut self, end: u64) {
        for _ in 0..3_000_000u32 {
            let Some(ev) = self.q.pop_until(end) else {
                return;
            };
            let before: Vec<Option<State>> = self
                .nodes
                .iter()
                .map(|n| n.module.as_ref().map(FarmModule::state))
                .collect();
            self.handle(ev);
            let after: Vec<Option<State>> = self
                .nodes
                .iter()
                .map(|n| n.module.as_ref().map(FarmModule::state))
                .collect();
            if before != after {
                self.last_change = self.q.now();
                self.checked = None;
            }
            self.check();
        }
        self.fail("event budget exhausted");
    }
}

fn run_schedule(seed: u64) {
    let mut sim = Sim::new(seed);
    for _ in 0..sim.rng.gen_range(0..30) {
        sim.random_fault();
    }
    sim.run_until(HORIZON_MS);
    // Heal, restart, start everything: all UP, buckets shared among all.
    for row in &mut sim.cut {
        row.iter_mut().for_each(|c| *c = false);
    }
    sim.last_change = sim.q.now();
    for i in 0..sim.nodes.len() {
        sim.nodes[i].started = true;
        if sim.nodes[i].module.is_none() {
            sim.schedule(0, Ev::Restart(i));
        }
        sim.schedule(
            20 * SCRIPT_MAX_MS,
            Ev::Admin {
                node: i,
                command: Command::Start,
            },
        );
    }
    let end = sim.q.now() + 40 * SCRIPT_MAX_MS + 3 * TIMEOUT_MS;
    sim.run_until(end);
    if !sim
        .nodes
        .iter()
        .all(|n| n.module.as_ref().is_some_and(|m| m.state() == State::Up))
    {
        sim.fail("not every node is UP after healing");
    }
    sim.last_change = 0;
    sim.checked = None;
    sim.check();
}

#[test]
fn farm_buckets_follow_membership_under_random_faults() {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(seed) = env("HOLDFAST_SIM_SEED") {
        run_schedule(seed);
        return;
    }
    let schedules = env("HOLDFAST_SIM_SCHEDULES").unwrap_or(200);
    let base =
        env("HOLDFAST_SIM_BASE").unwrap_or_else(|| rand::thread_rng().gen_range(0..u64::MAX / 2));
    eprintln!("simulating {schedules} farm schedules from seed {base} (HOLDFAST_SIM_BASE={base})");
    for i in 0..schedules {
        run_schedule(base + i);
    }
}
