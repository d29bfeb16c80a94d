//! Where acknowledgements are handled: on the thread that receives them,
//! or on a waiter when a hook may block; and replies awaiting several
//! outcomes.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;

use super::tail::Done;
use super::MirrorFs;

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

/// Several outcomes awaited together: `done` gets the first error, or
/// success, once the last part reported (from whichever thread).
pub(super) struct Join(Arc<Mutex<Parts>>);

struct Parts {
    left: usize,
    result: Result<(), fuser::Errno>,
    done: Option<Done>,
}

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
