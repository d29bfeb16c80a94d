//! The unacknowledged tail (invariant 1): every change applied here and
//! submitted, until the secondary acknowledged it. Only calls that promise
//! durability wait for it to pass them ([`Tail::barrier`]); the others
//! return at once while the tail stays within its limits, and otherwise
//! once it is back within them ([`Tail::relief`]), so a hard crash of the
//! primary loses at most that much of what calls returned.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which calls wait for the secondary's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Those that promise durability: fsync, fdatasync, a write on an
    /// `O_SYNC`/`O_DSYNC` descriptor, a directory fsync, and the close of
    /// a file written through that descriptor (NFS's close-to-open). The
    /// others return once applied here and queued.
    #[default]
    SyncCalls,
    /// Every call that changes something (strict).
    EveryCall,
}

/// How far the unacknowledged tail may grow before calls that change
/// something wait for it to shrink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailLimits {
    /// Bytes of data written and not acknowledged.
    pub bytes: u64,
    /// Age of the oldest change not acknowledged.
    pub age: Duration,
}

impl Default for TailLimits {
    /// Provisional, not yet measured: far above what a fast link keeps
    /// in flight, small beside a page cache (the benchmark is to choose).
    fn default() -> Self {
        TailLimits {
            bytes: 64 << 20,
            age: Duration::from_secs(1),
        }
    }
}

/// What the secondary has not acknowledged yet, at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unacknowledged {
    pub changes: u64,
    /// Bytes of data written among them.
    pub bytes: u64,
    /// Since when the oldest of them waits.
    pub oldest: Option<Duration>,
}

/// What a call does once its wait is over.
pub(super) type Done = Box<dyn FnOnce(Result<(), fuser::Errno>) + Send>;

/// The changes submitted and not yet acknowledged, numbered in submission
/// order (under the file system's ordering lock); shared with whoever
/// reports it.
#[derive(Clone)]
pub struct Tail(Arc<Mutex<State>>);

struct State {
    limits: TailLimits,
    /// The number the next change gets.
    end: u64,
    /// By number: when submitted, and its bytes of data.
    waiting: BTreeMap<u64, (Instant, u64)>,
    bytes: u64,
    /// The first change whose replication failed: every durability call
    /// after it fails too (`EIO`), as what it promises cannot hold.
    failed: Option<u64>,
    /// Calls waiting until every change numbered below the key is settled.
    barriers: BTreeMap<u64, Vec<Done>>,
    /// Calls waiting for the tail to be back within its limits.
    relief: Vec<Done>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tail").field(&self.unacknowledged()).finish()
    }
}

impl State {
    /// Every change numbered below this one is settled.
    fn settled(&self) -> u64 {
        self.waiting.keys().next().copied().unwrap_or(self.end)
    }

    fn within_limits(&self, now: Instant) -> bool {
        let oldest = self.waiting.values().next().map(|(at, _)| *at);
        self.bytes <= self.limits.bytes
            && oldest.is_none_or(|at| now.duration_since(at) <= self.limits.age)
    }

    fn outcome_before(&self, end: u64) -> Result<(), fuser::Errno> {
        match self.failed {
            Some(failed) if failed < end => Err(fuser::Errno::EIO),
            _ => Ok(()),
        }
    }
}

impl Tail {
    pub(super) fn new(limits: TailLimits) -> Self {
        Tail(Arc::new(Mutex::new(State {
            limits,
            end: 0,
            waiting: BTreeMap::new(),
            bytes: 0,
            failed: None,
            barriers: BTreeMap::new(),
            relief: Vec::new(),
        })))
    }

    /// A change of `bytes` bytes of data joins the tail: its number. Call
    /// under the ordering lock, in submission order.
    pub(super) fn enter(&self, bytes: u64) -> u64 {
        let mut state = self.0.lock();
        let n = state.end;
        state.end += 1;
        state.waiting.insert(n, (Instant::now(), bytes));
        state.bytes += bytes;
        n
    }

    /// The number the next change gets: a call that submitted its changes
    /// waits for those below it.
    pub(super) fn end(&self) -> u64 {
        self.0.lock().end
    }

    /// Change `n` is settled: acknowledged, or failed.
    pub(super) fn settle(&self, n: u64, result: Result<(), fuser::Errno>) {
        let mut state = self.0.lock();
        if let Some((_, bytes)) = state.waiting.remove(&n) {
            state.bytes -= bytes;
        }
        if result.is_err() && state.failed.is_none_or(|f| n < f) {
            state.failed = Some(n);
        }
        let settled = state.settled();
        let later = state.barriers.split_off(&(settled + 1));
        let ready = std::mem::replace(&mut state.barriers, later);
        let ready: Vec<(Result<(), fuser::Errno>, Done)> = ready
            .into_iter()
            .flat_map(|(end, dones)| {
                let outcome = state.outcome_before(end);
                dones.into_iter().map(move |d| (outcome, d))
            })
            .collect();
        let relieved = if state.relief.is_empty() || !state.within_limits(Instant::now()) {
            Vec::new()
        } else {
            std::mem::take(&mut state.relief)
        };
        // Outside the lock: a call's reply, or the next part of it.
        drop(state);
        for (outcome, done) in ready {
            done(outcome);
        }
        for done in relieved {
            done(Ok(()));
        }
    }

    /// Calls `done` once every change numbered below `end` is settled:
    /// with `EIO` if any of them (or any before) failed.
    pub(super) fn barrier(
        &self,
        end: u64,
        done: impl FnOnce(Result<(), fuser::Errno>) + Send + 'static,
    ) {
        let mut state = self.0.lock();
        if state.settled() >= end {
            let outcome = state.outcome_before(end);
            drop(state);
            return done(outcome);
        }
        state.barriers.entry(end).or_default().push(Box::new(done));
    }

    /// Calls `done` once the tail is within its limits (now, usually).
    pub(super) fn relief(&self, done: impl FnOnce(Result<(), fuser::Errno>) + Send + 'static) {
        let mut state = self.0.lock();
        if state.relief.is_empty() && state.within_limits(Instant::now()) {
            drop(state);
            return done(Ok(()));
        }
        state.relief.push(Box::new(done));
    }

    /// What the secondary has not acknowledged yet.
    pub fn unacknowledged(&self) -> Unacknowledged {
        let state = self.0.lock();
        Unacknowledged {
            changes: state.waiting.len() as u64,
            bytes: state.bytes,
            oldest: state.waiting.values().next().map(|(at, _)| at.elapsed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A maker of [`Done`]s, and where what each got arrives.
    fn recorder() -> (impl Fn() -> Done, mpsc::Receiver<Result<(), fuser::Errno>>) {
        let (tx, rx) = mpsc::channel();
        (
            move || {
                let tx = tx.clone();
                Box::new(move |r| tx.send(r).unwrap())
            },
            rx,
        )
    }

    #[test]
    fn a_barrier_waits_for_every_change_before_it_whatever_the_order_of_acknowledgements() {
        let tail = Tail::new(TailLimits::default());
        let (a, b, c) = (tail.enter(10), tail.enter(20), tail.enter(30));
        let (done, rx) = recorder();
        tail.barrier(c, done());
        tail.settle(b, Ok(()));
        assert!(rx.try_recv().is_err(), "change {a} still waits");
        assert_eq!(tail.unacknowledged().bytes, 40);
        tail.settle(a, Ok(()));
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        // Change c is after the barrier: it does not hold it.
        assert_eq!(tail.unacknowledged().changes, 1);
        tail.settle(c, Ok(()));
        tail.barrier(tail.end(), done());
        assert_eq!(rx.try_recv(), Ok(Ok(())));
    }

    #[test]
    fn a_failure_fails_every_barrier_after_it_not_before() {
        let tail = Tail::new(TailLimits::default());
        let (a, b) = (tail.enter(0), tail.enter(0));
        let (done, rx) = recorder();
        tail.barrier(a + 1, done());
        tail.barrier(b + 1, done());
        tail.settle(b, Err(fuser::Errno::EIO));
        tail.settle(a, Ok(()));
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert_eq!(rx.try_recv(), Ok(Err(fuser::Errno::EIO)));
        tail.barrier(tail.end(), done());
        assert_eq!(rx.try_recv(), Ok(Err(fuser::Errno::EIO)));
    }

    #[test]
    fn calls_beyond_the_byte_limit_wait_until_the_tail_shrinks() {
        let tail = Tail::new(TailLimits {
            bytes: 100,
            age: Duration::from_secs(3600),
        });
        let (done, rx) = recorder();
        let a = tail.enter(80);
        tail.relief(done());
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        let b = tail.enter(80);
        tail.relief(done());
        assert!(rx.try_recv().is_err(), "160 bytes unacknowledged");
        tail.settle(b, Ok(()));
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        tail.settle(a, Ok(()));
        assert_eq!(tail.unacknowledged(), Unacknowledged::default());
    }

    #[test]
    fn calls_wait_while_the_oldest_change_is_older_than_the_age_limit() {
        let tail = Tail::new(TailLimits {
            bytes: u64::MAX,
            age: Duration::ZERO,
        });
        let (done, rx) = recorder();
        let a = tail.enter(1);
        std::thread::sleep(Duration::from_millis(2));
        tail.relief(done());
        assert!(rx.try_recv().is_err());
        assert!(tail.unacknowledged().oldest >= Some(Duration::from_millis(2)));
        tail.settle(a, Ok(()));
        assert_eq!(rx.try_recv(), Ok(Ok(())));
    }
}
