//! Replies sent once the secondary acknowledged: on the thread that
//! receives the acknowledgement, or on a waiter when they may block.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;

use super::MirrorFs;
use crate::op::{Ack, Change};

type Job = Box<dyn FnOnce() + Send>;

/// Threads finishing requests that may block (a change held for the
/// secondary, a failure to record): each job wakes one idle thread (a channel
/// behind a shared lock would wake a second one to take the next turn).
/// They end once the file system is gone.
#[derive(Clone)]
pub(super) struct Waiters(Arc<Jobs>);

#[derive(Default)]
struct Jobs {
    queue: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
}

impl Waiters {
    pub(super) fn new(count: usize) -> std::io::Result<Self> {
        let jobs = Arc::new(Jobs::default());
        for _ in 0..count {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name("mirror-wait".into())
                .spawn(move || loop {
                    let mut queue = jobs.queue.lock();
                    let job = loop {
                        match queue.0.pop_front() {
                            Some(job) => break job,
                            // Closed, and nothing left to finish.
                            None if queue.1 => return,
                            None => jobs.ready.wait(&mut queue),
                        }
                    };
                    drop(queue);
                    job();
                })?;
        }
        Ok(Waiters(jobs))
    }

    pub(super) fn run(&self, job: impl FnOnce() + Send + 'static) {
        self.0.queue.lock().0.push_back(Box::new(job));
        self.0.ready.notify_one();
    }
}

impl Drop for MirrorFs {
    fn drop(&mut self) {
        self.waiters.0.queue.lock().1 = true;
        self.waiters.0.ready.notify_all();
    }
}

/// A change submitted to the replicator, its acknowledgement not yet awaited.
pub(super) struct Pending(pub(super) Option<(Result<Ack, crate::op::ReplicationError>, Change)>);

impl Pending {
    /// Waits for the secondary; a failed replication is EIO.
    pub(super) fn acknowledged(self) -> Result<(), fuser::Errno> {
        match self.0 {
            Some((ack, change)) => outcome(&change, ack.and_then(Ack::wait)),
            None => Ok(()),
        }
    }

    /// Calls `done` with what [`Self::acknowledged`] returns, once known:
    /// here if it is, else on the thread that receives the secondary's
    /// answer (no hand-over to another thread), or on a waiter if a hook
    /// may block there (a failure to record, a change held).
    pub(super) fn then(
        self,
        waiters: &Waiters,
        done: impl FnOnce(Result<(), fuser::Errno>) + Send + 'static,
    ) {
        let (ack, change) = match self.0 {
            Some((Ok(ack), change)) => (ack, change),
            unknown => return done(Pending(unknown).acknowledged()),
        };
        let waiters = waiters.clone();
        ack.then(move |ack| {
            let known = ack.is_done();
            let finish = move || done(outcome(&change, ack.wait()));
            if known {
                finish()
            } else {
                waiters.run(finish)
            }
        });
    }
}

/// A failed replication is EIO for the application.
fn outcome(
    change: &Change,
    acknowledged: Result<(), crate::op::ReplicationError>,
) -> Result<(), fuser::Errno> {
    acknowledged.map_err(|e| {
        tracing::error!("replication of {:?} failed: {e}", change.op.paths());
        fuser::Errno::EIO
    })
}

/// Several outcomes awaited together: `done` gets the first error, or
/// success, once the last part reported (from whichever thread).
pub(super) struct Join(Arc<Mutex<Parts>>);

struct Parts {
    left: usize,
    result: Result<(), fuser::Errno>,
    done: Option<Done>,
}

/// What a request does once its outcome is known.
type Done = Box<dyn FnOnce(Result<(), fuser::Errno>) + Send>;

impl Join {
    pub(super) fn new(
        parts: usize,
        done: impl FnOnce(Result<(), fuser::Errno>) + Send + 'static,
    ) -> Self {
        Join(Arc::new(Mutex::new(Parts {
            left: parts,
            result: Ok(()),
            done: Some(Box::new(done)),
        })))
    }

    /// One part's reporter.
    pub(super) fn part(&self) -> impl FnOnce(Result<(), fuser::Errno>) + Send + 'static {
        let parts = self.0.clone();
        move |result| {
            let mut p = parts.lock();
            if p.result.is_ok() {
                p.result = result;
            }
            p.left -= 1;
            if p.left == 0 {
                let (done, result) = (p.done.take(), p.result);
                drop(p);
                if let Some(done) = done {
                    done(result);
                }
            }
        }
    }
}

/// A write applied in chunks, each submitted as soon as it is applied.
pub(super) struct ChunkedWrite {
    /// Bytes applied locally (fewer than asked: a short write).
    pub(super) bytes: usize,
    pub(super) chunks: Vec<Pending>,
}

impl ChunkedWrite {
    /// `bytes` applied, nothing to replicate.
    pub(super) fn all(bytes: usize) -> Self {
        ChunkedWrite {
            bytes,
            chunks: Vec::new(),
        }
    }

    /// Calls `done` once every chunk is acknowledged (each one's failure
    /// is recorded when waited for, see [`Ack::map_failure`]): bytes
    /// written, or EIO if any chunk failed.
    pub(super) fn then(
        self,
        waiters: &Waiters,
        done: impl FnOnce(Result<u32, fuser::Errno>) + Send + 'static,
    ) {
        let bytes = self.bytes as u32;
        let done = move |r: Result<(), fuser::Errno>| done(r.map(|()| bytes));
        let mut chunks = self.chunks;
        if chunks.len() == 1 {
            return chunks.pop().expect("one").then(waiters, done);
        }
        let join = Join::new(chunks.len(), done);
        for chunk in chunks {
            chunk.then(waiters, join.part());
        }
    }
}
