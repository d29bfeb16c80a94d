//! The primary's end of the replication connection.
//!
//! Many threads submit concurrently; each change gets the next sequence
//! number and is written in that order (under one lock), then its caller
//! waits for its own acknowledgement while others submit. One reader thread
//! matches the secondary's replies to waiters by sequence number. When the
//! connection fails, every waiter and every later submission gets the error:
//! nothing is reported acknowledged that was not.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use holdfast_membership::ClusterKey;

use crate::op::{Ack, Change, ReplicationError, Replicator};
use crate::protocol::{primary_handshake, Direction, Opener, Reply, Sealer};
use crate::resync::{Answer, Peer, Request};

/// A [`crate::protocol::Message`] by reference: the same encoding, without
/// copying a write's data to send it.
#[derive(Debug, serde::Serialize)]
enum Outgoing<'a> {
    Change(&'a Change),
    Resync(&'a Request),
}

/// Who waits for the reply to one frame.
#[derive(Debug)]
enum Waiter {
    Ack(mpsc::Sender<Result<(), ReplicationError>>),
    Answer(mpsc::Sender<Result<Answer, ReplicationError>>),
}

impl Waiter {
    fn fail(self, error: ReplicationError) {
        // A waiter that gave up is not an error.
        match self {
            Waiter::Ack(tx) => drop(tx.send(Err(error))),
            Waiter::Answer(tx) => drop(tx.send(Err(error))),
        }
    }
}

#[derive(Debug)]
struct Writer {
    stream: TcpStream,
    sealer: Sealer,
}

#[derive(Debug, Default)]
struct Waiters {
    /// By sequence number (so the oldest first), with when it was sent.
    pending: BTreeMap<u64, (Instant, Waiter)>,
    /// Set once: the connection is unusable from then on.
    broken: Option<ReplicationError>,
}

#[derive(Debug)]
struct Shared {
    writer: Mutex<Writer>,
    waiters: Mutex<Waiters>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder leaves consistent data here (plain inserts/removes).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Fails every waiting caller and every later submission with `error`.
    fn break_with(&self, error: ReplicationError) {
        let mut w = lock(&self.waiters);
        if w.broken.is_none() {
            tracing::warn!("replication stopped: {error}");
            w.broken = Some(error.clone());
        }
        for (_, (_, waiter)) in std::mem::take(&mut w.pending) {
            waiter.fail(error.clone());
        }
    }
}

/// Limit of the TCP connection and of the handshake.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// [`Replicator`] over an authenticated TCP connection to a [`crate::Receiver`].
#[derive(Debug)]
pub struct TcpReplicator {
    shared: Arc<Shared>,
    /// To unblock the reader thread on drop.
    control: TcpStream,
    reader: Option<JoinHandle<()>>,
}

impl TcpReplicator {
    /// Connects to the secondary at `addr` and authenticates both sides.
    pub fn connect(addr: SocketAddr, key: &ClusterKey) -> Result<Self, ReplicationError> {
        let connect_err =
            |e: &dyn std::fmt::Display| ReplicationError::Connect(format!("{addr}: {e}"));
        // Bounded: an unreachable secondary must not hold the caller.
        let mut stream =
            TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| connect_err(&e))?;
        stream
            .set_read_timeout(Some(CONNECT_TIMEOUT))
            .map_err(|e| connect_err(&e))?;
        // Each change is one write; waiting to coalesce only adds latency.
        stream.set_nodelay(true).map_err(|e| connect_err(&e))?;
        let session = primary_handshake(&mut stream, key).map_err(|e| connect_err(&e))?;
        stream.set_read_timeout(None).map_err(|e| connect_err(&e))?;
        let mut read_half = stream.try_clone().map_err(|e| connect_err(&e))?;
        let control = stream.try_clone().map_err(|e| connect_err(&e))?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(Writer {
                stream,
                sealer: Sealer::new(session.clone(), Direction::ToSecondary),
            }),
            waiters: Mutex::new(Waiters::default()),
        });
        let mut opener = Opener::new(session, Direction::ToPrimary);
        let reader_shared = shared.clone();
        let reader = std::thread::Builder::new()
            .name("repl-acks".into())
            .spawn(move || {
                let error = loop {
                    let (seq, payload) = match opener.read(&mut read_half) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => {
                            break ReplicationError::Disconnected(
                                "secondary closed the connection".into(),
                            )
                        }
                        Err(e) => break ReplicationError::Disconnected(e.to_string()),
                    };
                    let reply: Reply = match postcard::from_bytes(&payload) {
                        Ok(reply) => reply,
                        Err(e) => {
                            break ReplicationError::Disconnected(format!(
                                "reply {seq} undecodable: {e}"
                            ))
                        }
                    };
                    let take = |seq| {
                        lock(&reader_shared.waiters)
                            .pending
                            .remove(&seq)
                            .map(|(_, w)| w)
                    };
                    match reply {
                        Reply::Ack { seq } => match take(seq) {
                            Some(Waiter::Ack(tx)) => {
                                let _ = tx.send(Ok(()));
                            }
                            Some(w @ Waiter::Answer(_)) => {
                                let e = ReplicationError::UnexpectedAnswer(format!("ack {seq}"));
                                w.fail(e.clone());
                                break e;
                            }
                            None => {}
                        },
                        Reply::Answer { seq, answer } => match take(seq) {
                            Some(Waiter::Answer(tx)) => {
                                let _ = tx.send(Ok(answer));
                            }
                            Some(w @ Waiter::Ack(_)) => {
                                let e = ReplicationError::UnexpectedAnswer(format!("{answer:?}"));
                                w.fail(e.clone());
                                break e;
                            }
                            None => {}
                        },
                        Reply::Refused { seq, reason } => {
                            // The copies may differ from here on: stop.
                            let error = ReplicationError::Refused { seq, reason };
                            if let Some(waiter) = take(seq) {
                                waiter.fail(error.clone());
                            }
                            break error;
                        }
                    }
                };
                reader_shared.break_with(error);
            })
            .map_err(|e| connect_err(&e))?;
        Ok(TcpReplicator {
            shared,
            control,
            reader: Some(reader),
        })
    }
}

impl TcpReplicator {
    /// Queues `message` after everything sent before; `waiter` gets its reply.
    fn send(&self, message: &Outgoing<'_>, waiter: Waiter) -> Result<(), ReplicationError> {
        let payload = postcard::to_allocvec(message)
            .map_err(|e| ReplicationError::Disconnected(format!("cannot encode change: {e}")))?;
        let mut writer = lock(&self.shared.writer);
        {
            let mut waiters = lock(&self.shared.waiters);
            if let Some(error) = &waiters.broken {
                return Err(error.clone());
            }
            // Registered before writing, so the reply cannot arrive first.
            waiters
                .pending
                .insert(writer.sealer.next_seq(), (Instant::now(), waiter));
        }
        let frame = writer.sealer.seal(&payload);
        if let Err(e) = writer.stream.write_all(&frame) {
            drop(writer);
            self.shared
                .break_with(ReplicationError::Disconnected(format!("send failed: {e}")));
        }
        Ok(())
    }
}

impl TcpReplicator {
    /// Why the connection no longer works, once it does not.
    pub fn broken(&self) -> Option<ReplicationError> {
        lock(&self.shared.waiters).broken.clone()
    }

    /// Since when the oldest change not yet acknowledged waits (resync
    /// requests, which may take long on the secondary, do not count).
    pub fn oldest_unacknowledged(&self) -> Option<Instant> {
        lock(&self.shared.waiters)
            .pending
            .values()
            .find(|(_, w)| matches!(w, Waiter::Ack(_)))
            .map(|(sent, _)| *sent)
    }

    /// Bounds each write to the secondary (a full socket buffer: the
    /// secondary does not read); past it the connection breaks. `None`:
    /// writes wait as long as it takes.
    pub fn set_send_timeout(&self, timeout: Option<std::time::Duration>) {
        let writer = lock(&self.shared.writer);
        if let Err(e) = writer.stream.set_write_timeout(timeout) {
            tracing::warn!("replication send timeout: {e}");
        }
    }

    /// Closes the connection: every waiting and later change fails.
    pub fn close(&self) {
        let _ = self.control.shutdown(Shutdown::Both);
    }
}

impl Replicator for TcpReplicator {
    fn submit(&self, change: &Change) -> Result<Ack, ReplicationError> {
        let (tx, rx) = mpsc::channel();
        self.send(&Outgoing::Change(change), Waiter::Ack(tx))?;
        Ok(Ack::waiting(rx))
    }
}

impl Peer for TcpReplicator {
    fn ask(&self, request: &Request) -> Result<Answer, ReplicationError> {
        let (tx, rx) = mpsc::channel();
        self.send(&Outgoing::Resync(request), Waiter::Answer(tx))?;
        rx.recv()
            .unwrap_or_else(|_| Err(ReplicationError::Disconnected("answer abandoned".into())))
    }
}

impl Drop for TcpReplicator {
    fn drop(&mut self) {
        let _ = self.control.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
