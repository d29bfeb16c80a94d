//! Stopping a replication thread through channels: its owner holds a
//! [`Stopper`], the thread a [`StopSignal`] whose waits end at once when
//! stopped, and which tells the owner, dropped with the thread, that it
//! ended.

use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::Duration;

/// The owner's side.
#[derive(Debug)]
pub(super) struct Stopper {
    /// Dropped to stop the thread.
    stop: Option<mpsc::Sender<()>>,
    /// Disconnected once the thread dropped its [`StopSignal`].
    ended: mpsc::Receiver<()>,
}

/// The thread's side.
#[derive(Debug)]
pub(super) struct StopSignal {
    /// Disconnected when the thread must stop.
    stop: mpsc::Receiver<()>,
    /// Dropped with the thread: its owner learns it ended.
    _ending: mpsc::Sender<()>,
}

/// A stopper and the signal it sends.
pub(super) fn stop_signal() -> (Stopper, StopSignal) {
    let (stop, stopped) = mpsc::channel();
    let (ending, ended) = mpsc::channel();
    (
        Stopper {
            stop: Some(stop),
            ended,
        },
        StopSignal {
            stop: stopped,
            _ending: ending,
        },
    )
}

impl Stopper {
    /// Wakes the thread: it stops.
    pub(super) fn stop(&mut self) {
        drop(self.stop.take());
    }

    /// Waits at most `d` for the thread to end; whether it did.
    pub(super) fn ended_within(&self, d: Duration) -> bool {
        self.ended.recv_timeout(d) == Err(RecvTimeoutError::Disconnected)
    }
}

impl StopSignal {
    pub(super) fn stopped(&self) -> bool {
        self.stop.try_recv() == Err(TryRecvError::Disconnected)
    }

    /// Waits `d`, or less if stopped; whether it was.
    pub(super) fn pause(&self, d: Duration) -> bool {
        self.stop.recv_timeout(d) == Err(RecvTimeoutError::Disconnected)
    }
}
