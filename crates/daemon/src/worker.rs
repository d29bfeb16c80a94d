//! A module's blocking work — mounts and replication receivers, the
//! virtual IP, the farm's filter — on a thread of its own, so that the
//! module's task (its heartbeats, and the other modules' tasks on the same
//! runtime) never waits for a disk, a peer or `nft`. Jobs run in the order
//! asked; each one's result comes back to the task through a channel, and
//! the task holds back what must follow it (the VIP after the mount, a
//! script after the VIP).

use std::sync::mpsc;

use tokio::sync::mpsc as tokio_mpsc;

/// Work for a [`Worker`], run on its thread against its state.
pub(crate) trait Job: Send + 'static {
    /// What the thread owns (mounts, receivers, the farm's filter).
    type State: Send + 'static;
    /// What the task learns of the job.
    type Done: Send + 'static;

    fn run(self, state: &mut Self::State) -> Self::Done;
}

/// The handle of a module's worker thread. Dropping it ends the thread
/// once its jobs are done (dropping its state there: releasing whatever
/// is still held).
#[derive(Debug)]
pub(crate) struct Worker<J: Job> {
    jobs: mpsc::Sender<J>,
    /// Closed once the thread has dropped its state.
    ended: tokio::sync::oneshot::Receiver<()>,
}

impl<J: Job> Worker<J> {
    /// Starts the thread; each job's result is sent to `done`.
    pub(crate) fn start(
        name: String,
        mut state: J::State,
        done: tokio_mpsc::UnboundedSender<J::Done>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<J>();
        let (ending, ended) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name(name).spawn(move || {
            for job in queue {
                // The task may be gone (aborted): the rest is still done.
                let _ = done.send(job.run(&mut state));
            }
            drop(state);
            drop(ending);
        })?;
        Ok(Worker { jobs, ended })
    }

    /// Queues `job` after those asked before.
    pub(crate) fn ask(&self, job: J) {
        // The thread ends only when this handle is dropped.
        let _ = self.jobs.send(job);
    }

    /// Ends the thread once the jobs asked are done, its state dropped.
    pub(crate) async fn finish(self) {
        let Worker { jobs, ended } = self;
        drop(jobs);
        let _ = ended.await;
    }
}
