//! The secondary's end: applies changes in sequence order to its copy of
//! the directory, reached through a held descriptor like on the primary.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use holdfast_key::{ClusterKey, SessionKey};
use parking_lot::Mutex;

use crate::apply::Root;
use crate::exclusions::Exclusions;
use std::os::unix::ffi::OsStringExt;

use crate::activity::Activity;
use crate::entry::{Attributes, EntryState};
use crate::generation::{boot_id, GenerationStore, Generations, StoreError};
use crate::op::{is_relative_inside, Change, Op};
use crate::protocol::{
    secondary_handshake, Direction, Message, Opener, ProtocolError, Reply, Sealer,
};
use crate::resync::{Answer, Request};

/// When the secondary acknowledges a change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AckMode {
    /// As soon as it is received (and checked), before applying — an
    /// explicit fsync too (the secondary still performs it, within
    /// [`FLUSH_DELAY`]): a change survives the loss of either node, not
    /// of both at once.
    #[default]
    Receipt,
    /// After it is applied and synced to disk on the secondary: a change
    /// survives the loss of both nodes at once (a double power cut).
    Durable,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("cannot open the replicated directory {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The connection did not pass the handshake: not a primary of this
    /// cluster (a refusal, not a failure of replication).
    #[error(transparent)]
    Handshake(ProtocolError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("change {seq} names a path outside the replicated directory: {path:?}")]
    Escape { seq: u64, path: PathBuf },
    #[error("resynchronisation request {seq} refused: this copy has no generation record")]
    NoGenerations { seq: u64 },
    #[error(transparent)]
    Generations(#[from] StoreError),
    #[error("cannot flush the copy to disk: {0}")]
    Sync(std::io::Error),
    #[error("change {seq} ({op}) failed to apply: {source}")]
    Apply {
        seq: u64,
        op: String,
        source: std::io::Error,
    },
}

impl ReceiverError {
    /// The change named an entry (or a parent) this copy does not have.
    fn is_missing_entry(&self) -> bool {
        matches!(self, ReceiverError::Apply { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What the reader hands to the applier, in stream order.
#[derive(Debug)]
enum Item {
    Change(u64, Change),
    Request(u64, Request),
    /// Refused on reading (a path leaving the directory): refused in its
    /// place, after everything before it was applied.
    Refuse(u64, ReceiverError),
}

/// Batches queued for the applier at most: bounds what is received but not
/// yet applied (the reader waits, and TCP holds the primary back), in
/// memory and in what a secondary taking over must apply first — while
/// leaving room for a lone writer's write + fsync pairs (a batch each)
/// to be acknowledged while the secondary's disk flushes.
const QUEUED_BATCHES: usize = 32;
/// After this long without anything to apply, the secondary tells the
/// primary how far it has applied (acknowledgements on receipt go before).
const IDLE: std::time::Duration = std::time::Duration::from_millis(50);
/// A batch is passed on once it holds this many bytes of frames.
const BATCH_BYTES: usize = 1 << 20;
/// With receipt acknowledgements, the reader applies a batch of changes
/// up to this size itself when the applier has nothing left to do: waking
/// the applier costs more here than writing that much (an idle vCPU halts
/// at once), while a larger batch would hold up reading what follows.
const INLINE_BYTES: usize = 64 << 10;
/// With receipt acknowledgements, how long the secondary may hold an
/// fsync to perform it together with the next ones: nobody waits for it
/// (what a restart of its host may lose is compared by checksums anyway,
/// see [`crate::compare_reason`]), and one flush per fsync of a lone
/// writer doubled the flushes of the disk both nodes may share.
const FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// Flushes asked for with receipt acknowledgements and not yet performed:
/// what each makes durable, opened when asked, each object once. Deferred
/// by whichever thread applies the fsync, performed by the applier.
#[derive(Debug, Default)]
struct Flushes {
    since: Option<std::time::Instant>,
    /// By inode number (one file system: nested mounts are refused).
    objects: HashMap<u64, OwnedFd>,
}

impl Flushes {
    /// True when none was held before (the applier does not know when
    /// these are due).
    fn defer(&mut self, targets: Vec<OwnedFd>) -> Result<bool, rustix::io::Errno> {
        for fd in targets {
            let ino = rustix::fs::fstat(&fd)?.st_ino;
            self.objects.entry(ino).or_insert(fd);
        }
        let first = self.since.is_none();
        self.since.get_or_insert_with(std::time::Instant::now);
        Ok(first)
    }

    /// How long until they are due; `None` when none waits.
    fn due_in(&self) -> Option<std::time::Duration> {
        self.since
            .map(|since| FLUSH_DELAY.saturating_sub(since.elapsed()))
    }

    /// What is held, to flush outside the lock (the reader may defer
    /// more meanwhile).
    fn take(&mut self) -> Vec<OwnedFd> {
        self.since = None;
        self.objects.drain().map(|(_, fd)| fd).collect()
    }
}

/// Frames read and not yet passed on to the applier.
#[derive(Debug, Default)]
struct Batch {
    items: Vec<Item>,
    bytes: usize,
    /// The last change to acknowledge on receipt, if any since the last flush.
    received: Option<u64>,
}

impl Batch {
    /// Whether the reader may apply it itself: changes only (requests
    /// and refusals are the applier's), and small.
    fn is_light(&self) -> bool {
        self.bytes <= INLINE_BYTES && self.items.iter().all(|i| matches!(i, Item::Change(..)))
    }
}

/// What the reader knows of the applier's progress.
#[derive(Debug, Default)]
struct Handover {
    /// Batches handed over and not yet applied: at zero, the reader may
    /// apply the next batch itself, in order.
    queued: AtomicUsize,
    /// Between a resynchronisation's `Begin` and `End`, as last applied.
    resyncing: AtomicBool,
    flushes: Mutex<Flushes>,
}

impl Handover {
    /// Performs the held flushes.
    fn flush(&self) -> Result<(), ReceiverError> {
        let held = self.flushes.lock().take();
        for fd in held {
            rustix::fs::fsync(&fd).map_err(|e| ReceiverError::Sync(e.into()))?;
        }
        Ok(())
    }

    fn flushes_due_in(&self) -> Option<std::time::Duration> {
        self.flushes.lock().due_in()
    }
}

/// Whether `buffered` starts with a whole frame (reading it will not wait).
fn holds_a_frame(buffered: &[u8]) -> bool {
    buffered.len() >= 4
        && (u32::from_be_bytes([buffered[0], buffered[1], buffered[2], buffered[3]]) as usize)
            <= buffered.len() - 4
}

/// The secondary's replies, written by the reader (acknowledgements on
/// receipt) and the applier (the rest): sealed and written under one lock,
/// so their sequence numbers follow the order on the wire.
#[derive(Debug)]
struct Replies {
    out: Mutex<(TcpStream, Sealer)>,
    /// Every frame numbered below it is applied: the primary learns from
    /// it which changes acknowledged on receipt may be missing here.
    applied: AtomicU64,
}

impl Replies {
    /// Refuses change or request `seq`: the session ends with `error`.
    fn refuse(&self, seq: u64, error: ReceiverError) -> Result<(), ReceiverError> {
        tracing::error!("{error}");
        self.send(&Reply::Refused {
            seq,
            reason: error.to_string(),
        })?;
        Err(error)
    }

    fn send(&self, reply: &Reply) -> Result<(), ReceiverError> {
        let payload = postcard::to_allocvec(reply).expect("replies always encode");
        let mut out = self.out.lock();
        let (stream, sealer) = &mut *out;
        let frame = sealer.seal(&payload);
        stream
            .write_all(&frame)
            .map_err(|e| ProtocolError::from(e).into())
    }
}

/// Applies what one primary sends to one directory.
#[derive(Debug)]
pub struct Receiver {
    root: Root,
    key: ClusterKey,
    mode: AckMode,
    /// Where this copy's generation (and "incomplete") is recorded; a
    /// resynchronisation is refused without it.
    generations: Option<GenerationStore>,
    /// Where this copy's activity log lives (its change log's directory),
    /// reported at connection and emptied once resynchronised.
    activity: Option<PathBuf>,
    /// Set false when a resynchronisation begins, true when it ends.
    synced: Option<Arc<AtomicBool>>,
    /// The running kernel's ([`boot_id`]).
    boot: Option<String>,
    /// What of the directory is not replicated: this copy's own.
    exclusions: Exclusions,
}

impl Receiver {
    pub fn new(dir: &Path, key: ClusterKey, mode: AckMode) -> Result<Self, ReceiverError> {
        let root = Root::new(dir).map_err(|source| ReceiverError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Receiver {
            root,
            key,
            mode,
            generations: None,
            activity: None,
            synced: None,
            boot: boot_id(),
            exclusions: Exclusions::default(),
        })
    }

    /// What `exclusions` excludes is this copy's own: a directory the
    /// primary removes goes with the excluded entries it holds here.
    pub fn with_exclusions(mut self, exclusions: Exclusions) -> Self {
        self.exclusions = exclusions;
        self
    }

    /// Records this copy's generation in `store`: needed to accept a
    /// resynchronisation (the copy is marked incomplete while it runs).
    pub fn with_generations(mut self, store: GenerationStore) -> Self {
        self.generations = Some(store);
        self
    }

    /// `flag` becomes false when a resynchronisation into this copy
    /// begins and true when it completes: whether the copy is current.
    /// `dir`: where this node's activity log lives (the directory of the
    /// change log it keeps as a primary).
    pub fn with_activity(mut self, dir: &Path) -> Self {
        self.activity = Some(dir.to_path_buf());
        self
    }

    pub fn with_synced(mut self, flag: Arc<AtomicBool>) -> Self {
        self.synced = Some(flag);
        self
    }

    /// Serves one primary until it closes the connection (`Ok`) or
    /// something is wrong (forged frame, path escaping, apply failure). A
    /// refused change is reported to the primary before returning.
    ///
    /// Two threads: this one reads, checks and (on receipt) acknowledges
    /// every complete frame at hand with one reply, then hands them to an
    /// applier that applies them in order — so an acknowledgement never
    /// waits for earlier changes to be applied (an fsync, a large write),
    /// while answers and refusals keep their place in the stream. A light
    /// batch finding the applier idle is applied here instead (see
    /// [`INLINE_BYTES`]): no wake-up. Everything received is applied
    /// before this returns, whatever ended the session.
    pub fn serve_connection(&self, mut stream: TcpStream) -> Result<(), ReceiverError> {
        let session = self.accept(&mut stream)?;
        self.serve(stream, session)
    }

    /// The first half of [`Self::serve_connection`]: the handshake, which
    /// tells a primary of this cluster from anything else connecting (a
    /// [`ReceiverError::Handshake`]).
    pub fn accept(&self, stream: &mut TcpStream) -> Result<SessionKey, ReceiverError> {
        stream.set_nodelay(true).map_err(ProtocolError::from)?;
        secondary_handshake(stream, &self.key).map_err(ReceiverError::Handshake)
    }

    /// The second half of [`Self::serve_connection`], on an accepted
    /// connection.
    pub fn serve(&self, stream: TcpStream, session: SessionKey) -> Result<(), ReceiverError> {
        if self.mode == AckMode::Receipt {
            // Before anything is applied unsynced: which kernel holds it.
            self.update_record(|g| g.receiving(self.boot()))?;
        }
        let replies = Replies {
            out: Mutex::new((
                stream.try_clone().map_err(ProtocolError::from)?,
                Sealer::new(session.clone(), Direction::ToPrimary),
            )),
            applied: AtomicU64::new(0),
        };
        let mut opener = Opener::new(session, Direction::ToSecondary);
        // Many small frames arrive in one read.
        let mut incoming = std::io::BufReader::with_capacity(256 << 10, stream);
        let handover = Handover::default();
        std::thread::scope(|scope| {
            let (to_applier, items) = mpsc::sync_channel(QUEUED_BATCHES);
            let applier = std::thread::Builder::new()
                .name("repl-apply".into())
                .spawn_scoped(scope, || self.apply_stream(items, &handover, &replies))
                .map_err(ProtocolError::from)?;
            let applier_at = (&to_applier, &handover);
            let read = self.read_stream(&mut opener, &mut incoming, applier_at, &replies);
            drop(to_applier);
            // The applier's failure concerns an earlier change than the
            // reader's, and ends the reading: it is the one to report.
            let applied = applier
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            applied.and(read)
        })
    }

    /// The reading half of [`Self::serve_connection`]: frames checked and
    /// passed on in batches, each acknowledged before it is passed on in
    /// [`AckMode::Receipt`] (so no refusal of the applier can precede it).
    fn read_stream(
        &self,
        opener: &mut Opener,
        incoming: &mut std::io::BufReader<TcpStream>,
        applier: (&mpsc::SyncSender<Vec<Item>>, &Handover),
        replies: &Replies,
    ) -> Result<(), ReceiverError> {
        let mut batch = Batch::default();
        loop {
            // Before waiting for more: what is at hand is acknowledged and
            // applied now, not after the next frame.
            if !batch.items.is_empty()
                && !holds_a_frame(incoming.buffer())
                && !self.pass_on(&mut batch, applier, replies)?
            {
                return Ok(());
            }
            let (seq, payload) = match opener.read(incoming) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    // The frames before a bad one are good: kept.
                    self.pass_on(&mut batch, applier, replies)?;
                    return Err(e.into());
                }
            };
            let size = payload.len();
            let message = match Message::decode(payload) {
                Ok(message) => message,
                Err(e) => {
                    self.pass_on(&mut batch, applier, replies)?;
                    return Err(ProtocolError::Decode {
                        seq,
                        reason: e.to_string(),
                    }
                    .into());
                }
            };
            batch.bytes += size;
            match message {
                Message::Change(change) => {
                    if let Some(path) = change.escaping_path() {
                        // Refused in order, once everything before is applied.
                        let error = ReceiverError::Escape {
                            seq,
                            path: path.to_path_buf(),
                        };
                        batch.items.push(Item::Refuse(seq, error));
                        self.pass_on(&mut batch, applier, replies)?;
                        return Ok(());
                    }
                    if self.mode == AckMode::Receipt {
                        batch.received = Some(seq);
                    }
                    batch.items.push(Item::Change(seq, change));
                }
                Message::Resync(request) => batch.items.push(Item::Request(seq, request)),
            }
            if batch.bytes >= BATCH_BYTES && !self.pass_on(&mut batch, applier, replies)? {
                return Ok(());
            }
        }
        self.pass_on(&mut batch, applier, replies)?;
        Ok(())
    }

    /// Acknowledges what was received (one reply for all), then applies
    /// the batch here if it is light and the applier idle (see
    /// [`INLINE_BYTES`]), else passes it on. False when the applier has
    /// stopped (it reports why).
    fn pass_on(
        &self,
        batch: &mut Batch,
        (to_applier, applier): (&mpsc::SyncSender<Vec<Item>>, &Handover),
        replies: &Replies,
    ) -> Result<bool, ReceiverError> {
        if let Some(upto) = batch.received.take() {
            let applied = replies.applied.load(Ordering::SeqCst);
            replies.send(&Reply::Ack { upto, applied })?;
        }
        let inline = self.mode == AckMode::Receipt
            && batch.is_light()
            && applier.queued.load(Ordering::SeqCst) == 0;
        batch.bytes = 0;
        let items = std::mem::take(&mut batch.items);
        if !inline {
            applier.queued.fetch_add(1, Ordering::SeqCst);
            return Ok(to_applier.send(items).is_ok());
        }
        let resyncing = applier.resyncing.load(Ordering::SeqCst);
        let mut wake = false;
        for item in items {
            if let Item::Change(seq, change) = item {
                let applied = self.apply_or_hold(seq, &change, applier);
                wake |= applied.as_ref().is_ok_and(|first| *first);
                self.settle(seq, applied.map(drop), resyncing, replies)?;
            }
        }
        if wake {
            // Nothing to apply: the applier learns when the flushes are due.
            applier.queued.fetch_add(1, Ordering::SeqCst);
            return Ok(to_applier.send(Vec::new()).is_ok());
        }
        Ok(true)
    }

    /// Applies change `seq` — or, an fsync acknowledged on receipt, holds
    /// its flush (see [`FLUSH_DELAY`]): true if it is the first held (the
    /// applier does not know when they are due).
    fn apply_or_hold(
        &self,
        seq: u64,
        change: &Change,
        handover: &Handover,
    ) -> Result<bool, ReceiverError> {
        match &change.op {
            Op::Fsync { path } if self.mode == AckMode::Receipt => self
                .root
                .flush_targets(path)
                .and_then(|targets| handover.flushes.lock().defer(targets))
                .map_err(|errno| apply_error(seq, change, errno)),
            _ => self.apply(seq, change).map(|()| false),
        }
    }

    /// After change `seq` was applied (or deferred): recorded as applied,
    /// and acknowledged if [`AckMode::Durable`] — or refused (the error).
    fn settle(
        &self,
        seq: u64,
        applied: Result<(), ReceiverError>,
        resyncing: bool,
        replies: &Replies,
    ) -> Result<(), ReceiverError> {
        if let Err(error) = applied {
            // A live change to an entry this copy lacks yet: the
            // resynchronisation brings the entry later, as it is
            // on the primary then — this change included.
            if !(resyncing && error.is_missing_entry()) {
                return replies.refuse(seq, error);
            }
            tracing::debug!("{error}: left to the resynchronisation");
        }
        replies.applied.store(seq + 1, Ordering::SeqCst);
        if self.mode == AckMode::Durable {
            replies.send(&Reply::Ack {
                upto: seq,
                applied: seq + 1,
            })?;
        }
        Ok(())
    }

    /// The applying half of [`Self::serve_connection`]: every item in
    /// stream order, then acknowledged ([`AckMode::Durable`]), answered or
    /// refused. A refusal ends the session: the reader is stopped.
    fn apply_stream(
        &self,
        items: mpsc::Receiver<Vec<Item>>,
        handover: &Handover,
        replies: &Replies,
    ) -> Result<(), ReceiverError> {
        let result = self.apply_items(items, handover, replies);
        if result.is_err() {
            // Wakes the reader (its read returns the end of the stream).
            let _ = replies.out.lock().0.shutdown(Shutdown::Read);
        }
        result
    }

    fn apply_items(
        &self,
        items: mpsc::Receiver<Vec<Item>>,
        handover: &Handover,
        replies: &Replies,
    ) -> Result<(), ReceiverError> {
        // Between `Begin` and `End`: changes live on the primary arrive
        // while the resynchronisation has not yet brought every entry.
        let mut resyncing = false;
        // How far the primary was last told this copy has applied.
        let mut reported = 0;
        // Tells the primary that everything received is applied (so it
        // would not re-send it, should this copy leave now), unless it knows.
        let tell_applied = |reported: &mut u64| -> Result<(), ReceiverError> {
            let applied = replies.applied.load(Ordering::SeqCst);
            if self.mode == AckMode::Receipt && applied > *reported {
                replies.send(&Reply::Ack {
                    upto: applied - 1,
                    applied,
                })?;
                *reported = applied;
            }
            Ok(())
        };
        loop {
            let due = handover.flushes_due_in();
            let batch = match items.recv_timeout(due.unwrap_or(IDLE).min(IDLE)) {
                Ok(batch) => batch,
                // Idle, or the held fsyncs are due.
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    handover.flush()?;
                    if due.is_none_or(|due| due >= IDLE) {
                        // Idle: once per idle period.
                        tell_applied(&mut reported)?;
                    }
                    continue;
                }
                // Nothing more to read (a clean stop closes the reading
                // side only): the last word, if the connection carries it.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    handover.flush()?;
                    let _ = tell_applied(&mut reported);
                    break;
                }
            };
            for item in batch {
                match item {
                    Item::Change(seq, change) => {
                        let applied = self.apply_or_hold(seq, &change, handover);
                        self.settle(seq, applied.map(drop), resyncing, replies)?;
                    }
                    Item::Request(seq, request) => {
                        // Requests record this copy's state: after the
                        // flushes asked for before them.
                        handover.flush()?;
                        match &request {
                            Request::Begin { .. } => resyncing = true,
                            Request::End { .. } => resyncing = false,
                            _ => {}
                        }
                        match self.handle(seq, &request) {
                            Ok(answer) => {
                                replies.applied.store(seq + 1, Ordering::SeqCst);
                                replies.send(&Reply::Answer { seq, answer })?
                            }
                            Err(error) => return replies.refuse(seq, error),
                        }
                    }
                    Item::Refuse(seq, error) => return replies.refuse(seq, error),
                }
            }
            handover.resyncing.store(resyncing, Ordering::SeqCst);
            // Last: the reader may apply the next batch itself from now on.
            handover.queued.fetch_sub(1, Ordering::SeqCst);
            if handover.flushes_due_in() == Some(std::time::Duration::ZERO) {
                handover.flush()?;
            }
        }
        Ok(())
    }

    /// A resynchronisation request, in stream order with the changes.
    fn handle(&self, seq: u64, request: &Request) -> Result<Answer, ReceiverError> {
        let failed = |what: &str, path: &Path, errno: rustix::io::Errno| {
            if matches!(errno, rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) {
                ReceiverError::Escape {
                    seq,
                    path: path.to_path_buf(),
                }
            } else {
                ReceiverError::Apply {
                    seq,
                    op: format!("{what} {}", path.display()),
                    source: errno.into(),
                }
            }
        };
        let checked = |path: &Path| {
            if is_relative_inside(path) {
                Ok(())
            } else {
                Err(ReceiverError::Escape {
                    seq,
                    path: path.to_path_buf(),
                })
            }
        };
        match request {
            Request::Begin { .. } => {
                if let Some(flag) = &self.synced {
                    flag.store(false, Ordering::SeqCst);
                }
                // Durable before the first resynchronised byte lands.
                self.update_generations(seq, Generations::resync_begin)?;
                Ok(Answer::Done)
            }
            Request::Generations => {
                let store = self
                    .generations
                    .as_ref()
                    .ok_or(ReceiverError::NoGenerations { seq })?;
                let record = store.load()?.unwrap_or_default();
                // Only a primary that stopped uncleanly needs it read.
                let activity = match &self.activity {
                    _ if !record.unclean => Activity::Regions(Vec::new()),
                    Some(dir) => crate::activity::load(dir),
                    None => Activity::Lost("this node keeps no activity log".into()),
                };
                Ok(Answer::Generations {
                    kept: record.kept_applied(self.boot.as_deref()),
                    record,
                    activity,
                })
            }
            Request::End { source } => {
                self.root
                    .syncfs()
                    .map_err(|e| failed("sync", Path::new(""), e))?;
                self.update_generations(seq, |g| {
                    g.resync_done(*source);
                    if self.mode == AckMode::Receipt {
                        // The stream goes on, unsynced again.
                        g.receiving(self.boot());
                    }
                })?;
                // Only now (the record says clean): its regions are moot —
                // and unused while it says so, so failing to empty the log
                // costs at most some extra comparison later.
                if let Some(dir) = &self.activity {
                    if let Err(e) = crate::activity::clear(dir) {
                        tracing::warn!("{e}");
                    }
                }
                if let Some(flag) = &self.synced {
                    flag.store(true, Ordering::SeqCst);
                }
                Ok(Answer::Done)
            }
            Request::Replay { moves } => {
                for m in moves {
                    checked(&m.from)?;
                    checked(&m.to)?;
                }
                Ok(Answer::Replayed {
                    skipped: self.root.replay(moves),
                })
            }
            Request::Ensure { path, state } => {
                checked(path)?;
                if let EntryState::Present(Attributes {
                    link: Some(first), ..
                }) = state
                {
                    checked(first)?;
                }
                let created = self
                    .root
                    .ensure(path, state)
                    .map_err(|e| failed("ensure", path, e))?;
                Ok(Answer::Ensured { created })
            }
            Request::List { path } => {
                checked(path)?;
                let names = self.root.list(path).map_err(|e| failed("list", path, e))?;
                Ok(Answer::Listed(
                    names
                        .into_iter()
                        .map(|n| serde_bytes::ByteBuf::from(n.into_vec()))
                        .collect(),
                ))
            }
            Request::Hashes {
                path,
                block,
                offset,
                len,
            } => {
                checked(path)?;
                if !(4096..=(16 << 20)).contains(block) {
                    return Err(failed("hash", path, rustix::io::Errno::INVAL));
                }
                let hashes = self
                    .root
                    .hashes(path, *block, *offset, *len)
                    .map_err(|e| failed("hash", path, e))?;
                Ok(Answer::Hashes(hashes))
            }
        }
    }

    fn boot(&self) -> &str {
        // Unknown: never taken for the boot of a later check.
        self.boot.as_deref().unwrap_or("unknown")
    }

    /// Updates the generation record, if there is one (saved only if
    /// changed).
    fn update_record(&self, update: impl FnOnce(&mut Generations)) -> Result<(), ReceiverError> {
        let Some(store) = &self.generations else {
            return Ok(());
        };
        let before = store.load()?.unwrap_or_default();
        let mut after = before.clone();
        update(&mut after);
        if after != before {
            store.save(&after)?;
        }
        Ok(())
    }

    /// No connection is served any more (a clean stop): flushes the copy
    /// to disk and records that what was applied under this boot is there,
    /// so a later resynchronisation needs no comparison even after a
    /// restart of this host (unless an earlier restart lost some already).
    pub fn sync(&self) -> Result<(), ReceiverError> {
        self.root
            .syncfs()
            .map_err(|errno| ReceiverError::Sync(errno.into()))?;
        self.update_record(|g| g.synced(self.boot()))
    }

    fn update_generations(
        &self,
        seq: u64,
        update: impl FnOnce(&mut Generations),
    ) -> Result<(), ReceiverError> {
        let store = self
            .generations
            .as_ref()
            .ok_or(ReceiverError::NoGenerations { seq })?;
        let mut g = store.load()?.unwrap_or_default();
        update(&mut g);
        store.save(&g)?;
        Ok(())
    }

    fn apply(&self, seq: u64, change: &Change) -> Result<(), ReceiverError> {
        let result = self
            .root
            .apply(change)
            .or_else(|e| {
                self.clear_excluded(change, e)?;
                self.root.apply(change)
            })
            .and_then(|()| {
                if self.mode == AckMode::Durable {
                    for path in change.op.paths() {
                        self.root.fsync(path)?;
                    }
                }
                Ok(())
            });
        result.map_err(|errno| apply_error(seq, change, errno))
    }

    /// A directory the primary removed or replaced (its own excluded
    /// entries removed first) may hold, here, excluded entries only this
    /// copy had: they go with it. Any other failure is `error`.
    fn clear_excluded(
        &self,
        change: &Change,
        error: rustix::io::Errno,
    ) -> Result<(), rustix::io::Errno> {
        let dir = match &change.op {
            Op::Rmdir { path } => path,
            Op::Rename { to, .. } => to,
            _ => return Err(error),
        };
        if !matches!(
            error,
            rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST
        ) || self.exclusions.is_empty()
        {
            return Err(error);
        }
        let excluded: Vec<PathBuf> = self
            .root
            .list(dir)?
            .into_iter()
            .map(|name| dir.join(name))
            .filter(|p| self.exclusions.excludes(p))
            .collect();
        if excluded.is_empty() {
            return Err(error);
        }
        for path in excluded {
            tracing::info!(
                "removing {} (excluded from replication, only here) with its directory",
                path.display()
            );
            self.root.remove_tree(&path)?;
        }
        Ok(())
    }
}

/// Why change `seq` could not be applied.
fn apply_error(seq: u64, change: &Change, errno: rustix::io::Errno) -> ReceiverError {
    let path = change.op.paths()[0].to_path_buf();
    // The path walk refuses symbolic links (ELOOP) and leaving the
    // directory or its mount (EXDEV): the primary never sends such paths.
    if matches!(errno, rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) {
        ReceiverError::Escape { seq, path }
    } else {
        ReceiverError::Apply {
            seq,
            op: format!("{} {}", op_name(&change.op), path.display()),
            source: errno.into(),
        }
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Write { .. } => "write",
        Op::Create { .. } => "create",
        Op::Mknod { .. } => "mknod",
        Op::Mkdir { .. } => "mkdir",
        Op::Unlink { .. } => "unlink",
        Op::Rmdir { .. } => "rmdir",
        Op::Rename { .. } => "rename",
        Op::Link { .. } => "link",
        Op::Symlink { .. } => "symlink",
        Op::SetAttr { .. } => "setattr",
        Op::Fallocate { .. } => "fallocate",
        Op::SetXattr { .. } => "setxattr",
        Op::RemoveXattr { .. } => "removexattr",
        Op::Fsync { .. } => "fsync",
    }
}
