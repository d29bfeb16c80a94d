//! The primary's end of the replication connection.
//!
//! Many threads submit concurrently; each change gets the next sequence
//! number and joins the outgoing queue in that order (under one lock, held
//! only to number and queue it), then its caller waits for its own
//! acknowledgement while others submit. Whoever submits while nobody is
//! writing becomes the writer: it seals what is queued and writes it in one
//! system call, again until the queue is empty, while later submitters only
//! queue (many small changes in flight become one TCP write, and a lone
//! writer pays no hand-over to another thread; a large write's data is sent
//! from where it lies, not copied into a frame). One reader thread matches
//! the secondary's replies to waiters by sequence number (one
//! acknowledgement covers every change up to the one it names). When the
//! connection fails, every
//! waiter and every later submission gets the error: nothing is reported
//! acknowledged that was not.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufReader, IoSlice, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use holdfast_key::ClusterKey;
use parking_lot::Mutex;

use crate::op::{Ack, AckSender, Change, Op, ReplicationError, Replicator};
use crate::protocol::{primary_handshake, Direction, Opener, Reply, Sealer};
use crate::resync::{Answer, Peer, Request};

/// A [`crate::protocol::Message`] by reference: the same encoding, without
/// copying a write's data to send it.
#[derive(Debug, serde::Serialize)]
enum Outgoing<'a> {
    Change(&'a Change),
    Resync(&'a Request),
}

/// The encoding of an [`Outgoing`], a write's data left where it lies
/// (shared, not copied) between what comes before and after it.
#[derive(Debug)]
struct Payload {
    head: Vec<u8>,
    data: Bytes,
    tail: Vec<u8>,
}

impl Payload {
    fn of(message: &Outgoing<'_>) -> Result<Self, postcard::Error> {
        let Outgoing::Change(Change {
            op: Op::Write { path, offset, data },
            stamps,
        }) = message
        else {
            return Ok(Payload {
                head: postcard::to_allocvec(message)?,
                data: Bytes::new(),
                tail: Vec::new(),
            });
        };
        // Postcard writes enum variants by index and lengths as varints,
        // fields in order: `Message::Change` (0), `Op::Write` (0), the
        // path's bytes, the offset, the data's length; the data; then the
        // change's stamps (the test below checks it against the whole).
        let head = postcard::to_allocvec(&(
            0u32,
            0u32,
            serde_bytes::Bytes::new(path.as_os_str().as_bytes()),
            offset,
            data.len(),
        ))?;
        Ok(Payload {
            head,
            data: data.clone(),
            tail: postcard::to_allocvec(stamps)?,
        })
    }

    fn parts(&self) -> [&[u8]; 3] {
        [&self.head, &self.data, &self.tail]
    }
}

/// Who waits for the reply to one frame.
#[derive(Debug)]
enum Waiter {
    Ack(AckSender),
    Answer(mpsc::Sender<Result<Answer, ReplicationError>>),
}

impl Waiter {
    fn fail(self, error: ReplicationError) {
        // A waiter that gave up is not an error.
        match self {
            Waiter::Ack(tx) => tx.send(Err(error)),
            Waiter::Answer(tx) => drop(tx.send(Err(error))),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Sequence number of the next frame queued.
    next_seq: u64,
    /// Encoded payloads not yet written, in sequence order.
    queue: VecDeque<Payload>,
    /// By sequence number (so the oldest first), with when it was queued.
    pending: BTreeMap<u64, (Instant, Waiter)>,
    /// Set once: the connection is unusable from then on.
    broken: Option<ReplicationError>,
    /// A submitter is writing the queue out.
    writing: bool,
    /// Every frame numbered below it is applied by the secondary.
    applied: u64,
    /// Called once when the connection breaks.
    on_break: BreakHooks,
}

/// What [`TcpReplicator::on_break`] registered.
#[derive(Default)]
struct BreakHooks(Vec<Box<dyn FnOnce() + Send>>);

impl std::fmt::Debug for BreakHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} hooks", self.0.len())
    }
}

#[derive(Debug)]
struct Writer {
    stream: TcpStream,
    sealer: Sealer,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Only ever taken by the submitter that is writing.
    writer: Mutex<Writer>,
}

impl Shared {
    /// Fails every waiting caller and every later submission with `error`.
    fn break_with(&self, error: ReplicationError) {
        let mut state = self.state.lock();
        if state.broken.is_none() {
            tracing::warn!("replication stopped: {error}");
            state.broken = Some(error.clone());
        }
        state.queue.clear();
        let pending = std::mem::take(&mut state.pending);
        let hooks = std::mem::take(&mut state.on_break.0);
        // Outside the lock: a waiter's callback may run here.
        drop(state);
        for (_, (_, waiter)) in pending {
            waiter.fail(error.clone());
        }
        for hook in hooks {
            hook();
        }
    }
}

impl Shared {
    /// Every change up to `upto` is acknowledged (requests among them wait
    /// for their answers), every frame below `applied` applied.
    fn acknowledge(&self, upto: u64, applied: u64) -> Result<(), ReplicationError> {
        let mut state = self.state.lock();
        if upto >= state.next_seq || applied > state.next_seq {
            return Err(ReplicationError::UnexpectedAnswer(format!(
                "an acknowledgement of {upto} (applied below {applied}), never sent"
            )));
        }
        // Replies come in order: `applied` only grows.
        state.applied = state.applied.max(applied);
        let acked: Vec<u64> = state
            .pending
            .range(..=upto)
            .filter(|(_, (_, w))| matches!(w, Waiter::Ack(_)))
            .map(|(seq, _)| *seq)
            .collect();
        let waiters: Vec<_> = acked
            .iter()
            .filter_map(|seq| state.pending.remove(seq))
            .collect();
        drop(state);
        for (_, waiter) in waiters {
            if let Waiter::Ack(tx) = waiter {
                // Runs the change's callback here, if it has one.
                tx.send(Ok(()));
            }
        }
        Ok(())
    }
}

/// Frames written per system call at most: 5 buffers each, within the
/// kernel's IOV_MAX (1024).
const BATCH: usize = 200;

impl Writer {
    /// Seals `batch` (in sequence order) and writes it in one go.
    fn write(&mut self, batch: &[Payload]) -> std::io::Result<()> {
        let seals: Vec<_> = batch
            .iter()
            .map(|p| self.sealer.seal_parts(&p.parts()))
            .collect();
        let mut slices = Vec::with_capacity(batch.len() * 5);
        for (payload, (head, tag)) in batch.iter().zip(&seals) {
            slices.push(IoSlice::new(head));
            slices.extend(
                payload
                    .parts()
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .map(IoSlice::new),
            );
            slices.push(IoSlice::new(tag));
        }
        write_all_vectored(&mut self.stream, &mut slices)
    }
}

/// `write_all` over several buffers.
fn write_all_vectored(
    stream: &mut TcpStream,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
        // Many acknowledgements arrive in one read.
        let mut read_half =
            BufReader::with_capacity(64 << 10, stream.try_clone().map_err(|e| connect_err(&e))?);
        let control = stream.try_clone().map_err(|e| connect_err(&e))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            writer: Mutex::new(Writer {
                stream,
                sealer: Sealer::new(session.clone(), Direction::ToSecondary),
            }),
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
                    // Replies come in order: `applied` only grows.
                    let take = |seq, applied: u64| {
                        let mut state = reader_shared.state.lock();
                        state.applied = state.applied.max(applied);
                        state.pending.remove(&seq).map(|(_, w)| w)
                    };
                    match reply {
                        Reply::Ack { upto, applied } => {
                            if let Err(e) = reader_shared.acknowledge(upto, applied) {
                                break e;
                            }
                        }
                        // A request is answered once handled, after all before it.
                        Reply::Answer { seq, answer } => match take(seq, seq + 1) {
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
                            if let Some(waiter) = take(seq, 0) {
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
    /// Queues `message` after everything sent before; `waiter` gets its
    /// reply. Writes the queue out unless another submitter is doing so.
    /// Returns the message's sequence number.
    fn send(&self, message: &Outgoing<'_>, waiter: Waiter) -> Result<u64, ReplicationError> {
        let payload = Payload::of(message)
            .map_err(|e| ReplicationError::Disconnected(format!("cannot encode change: {e}")))?;
        let mut state = self.shared.state.lock();
        if let Some(error) = &state.broken {
            return Err(error.clone());
        }
        // Registered before it can be sent, so the reply cannot arrive first.
        let seq = state.next_seq;
        state.next_seq += 1;
        state.pending.insert(seq, (Instant::now(), waiter));
        state.queue.push_back(payload);
        if state.writing {
            // Written by the submitter writing now, before it stops.
            return Ok(seq);
        }
        state.writing = true;
        loop {
            let n = state.queue.len().min(BATCH);
            let batch: Vec<Payload> = state.queue.drain(..n).collect();
            drop(state);
            let written = self.shared.writer.lock().write(&batch);
            state = self.shared.state.lock();
            if let Err(e) = written {
                state.writing = false;
                drop(state);
                // Fails this change's waiter too: its Ack reports it.
                self.shared
                    .break_with(ReplicationError::Disconnected(format!("send failed: {e}")));
                return Ok(seq);
            }
            if state.queue.is_empty() || state.broken.is_some() {
                state.writing = false;
                return Ok(seq);
            }
        }
    }
}

impl TcpReplicator {
    /// Why the connection no longer works, once it does not.
    pub fn broken(&self) -> Option<ReplicationError> {
        self.shared.state.lock().broken.clone()
    }

    /// Calls `hook` once the connection is broken (at once if it is):
    /// whoever watches it waits for this instead of polling [`Self::broken`].
    pub fn on_break(&self, hook: impl FnOnce() + Send + 'static) {
        let mut state = self.shared.state.lock();
        if state.broken.is_none() {
            state.on_break.0.push(Box::new(hook));
            return;
        }
        drop(state);
        hook();
    }

    /// Since when the oldest change not yet acknowledged waits (resync
    /// requests, which may take long on the secondary, do not count).
    pub fn oldest_unacknowledged(&self) -> Option<Instant> {
        self.shared
            .state
            .lock()
            .pending
            .values()
            .find(|(_, w)| matches!(w, Waiter::Ack(_)))
            .map(|(sent, _)| *sent)
    }

    /// Bounds each write to the secondary (a full socket buffer: the
    /// secondary does not read); past it the connection breaks. `None`:
    /// writes wait as long as it takes.
    pub fn set_send_timeout(&self, timeout: Option<std::time::Duration>) {
        // A socket option: it applies to the writer's descriptor too.
        if let Err(e) = self.control.set_write_timeout(timeout) {
            tracing::warn!("replication send timeout: {e}");
        }
    }

    /// Sends `request` without waiting for its answer (the connection is
    /// about to be closed): it reaches the secondary only if it still
    /// reads, in order after everything sent before.
    pub fn tell(&self, request: &Request) -> Result<(), ReplicationError> {
        let (tx, _) = mpsc::channel();
        self.send(&Outgoing::Resync(request), Waiter::Answer(tx))
            .map(drop)
    }

    /// Closes the connection: every waiting and later change fails.
    pub fn close(&self) {
        let _ = self.control.shutdown(Shutdown::Both);
    }
}

impl Replicator for TcpReplicator {
    fn submit(&self, change: &Change) -> Result<Ack, ReplicationError> {
        let (tx, ack) = Ack::channel();
        let seq = self.send(&Outgoing::Change(change), Waiter::Ack(tx))?;
        Ok(ack.numbered(seq))
    }

    fn applied(&self) -> Option<u64> {
        Some(self.shared.state.lock().applied)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Stamp, Time};
    use crate::protocol::Message;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use std::path::PathBuf;

    #[test]
    fn a_write_is_encoded_as_the_message_it_stands_for() {
        let stamp = |path: &str, sec| Stamp {
            path: path.into(),
            mtime: Time { sec, nsec: 999 },
        };
        let writes = [
            ("f", 0, vec![], vec![]),
            (
                "dir/file",
                1 << 40,
                vec![7u8; 300],
                vec![stamp("dir/file", -5)],
            ),
            (
                "a",
                u64::MAX,
                vec![1u8; 70_000],
                vec![stamp("a", i64::MAX), stamp("", 3)],
            ),
        ];
        let odd = OsString::from_vec(vec![b'x', 0xff]);
        for (path, offset, data, stamps) in writes {
            for path in [PathBuf::from(path), PathBuf::from(&odd)] {
                let change = Change {
                    op: Op::Write {
                        path,
                        offset,
                        data: data.clone().into(),
                    },
                    stamps: stamps.clone(),
                };
                let payload = Payload::of(&Outgoing::Change(&change)).unwrap();
                assert_eq!(
                    payload.parts().concat(),
                    postcard::to_allocvec(&Message::Change(change.clone())).unwrap(),
                    "{change:?}"
                );
                assert!(payload.head.len() < 32, "the data is not in the head");
            }
        }
    }
}
