//! The SECOND's side (and WAIT's): a receiving thread per replicated
//! directory, applying what the primary sends into the real directory
//! while a read-only mount keeps local processes from changing the copy.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use holdfast_key::ClusterKey;
use holdfast_membership::LogLevel;
use holdfast_replication::generation::StoreError;
use holdfast_replication::{AckMode, GenerationStore, Receiver, ReceiverError};
use parking_lot::Mutex;

use super::directory::{detach_stale_mounts, Dir};
use super::stop::{stop_signal, StopSignal, Stopper};
use crate::modlog::ModuleLog;
use crate::refusals::{Refusal, RefusalKind};

/// How often an idle receiving loop looks for a connection.
const POLL: Duration = Duration::from_millis(50);
/// How long a stopping receiver may take to apply what it received and
/// tell the primary, before its connection is closed.
const LAST_WORD: Duration = Duration::from_secs(5);

/// Why the read-only mount of a SECOND's copy could not be set or removed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadOnlyError {
    #[error("{}: {source}", path.display())]
    Marker {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read-only mount of {}: {source}", path.display())]
    Mount { path: PathBuf, source: nix::Error },
    #[error("removing the read-only mount of {}: {source}", path.display())]
    Unmount { path: PathBuf, source: nix::Error },
}

pub(super) struct ReceiverTask {
    receiver: Arc<Receiver>,
    /// Stops the receiving loop (it wakes at once).
    stopper: Stopper,
    /// Set before the stop: a connection's error is then the stop's doing.
    stopping: Arc<AtomicBool>,
    current: Arc<Mutex<Option<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
    /// Removed after the thread ended.
    read_only: Option<ReadOnly>,
}

/// Why a directory cannot receive replication.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReceiveError {
    #[error(transparent)]
    Record(#[from] StoreError),
    #[error("{address}:{port}: {source}")]
    Listen {
        address: IpAddr,
        port: u16,
        source: std::io::Error,
    },
    #[error(transparent)]
    Receiver(#[from] ReceiverError),
    #[error(transparent)]
    ReadOnly(#[from] ReadOnlyError),
}

/// What every receiver of a module shares.
#[derive(Debug, Clone)]
pub(super) struct Receiving {
    pub(super) key: ClusterKey,
    pub(super) ack: AckMode,
    /// This node's addresses on the heartbeat networks: where to listen.
    pub(super) local_addresses: Vec<IpAddr>,
    /// The peer's: the only ones accepted.
    pub(super) peer_addresses: Vec<IpAddr>,
    pub(super) log: ModuleLog,
}

impl ReceiverTask {
    /// Starts receiving into `dir` (its record set by the receiver in
    /// `synced`), read-only to local processes meanwhile.
    pub(super) fn start(
        dir: &Dir,
        with: &Receiving,
        synced: &Arc<AtomicBool>,
    ) -> Result<Self, ReceiveError> {
        // The receiver must open the real directory, not a view of it.
        detach_stale_mounts(dir, &with.log);
        dir.record_unknown_data()?;
        let mut failed = None;
        let mut listeners = Vec::new();
        for address in &with.local_addresses {
            match TcpListener::bind(SocketAddr::new(*address, dir.port))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(l) => listeners.push(l),
                Err(source) => {
                    failed = Some(ReceiveError::Listen {
                        address: *address,
                        port: dir.port,
                        source,
                    })
                }
            }
        }
        let receiver = Receiver::new(&dir.path, with.key.clone(), with.ack).map(|r| {
            r.with_generations(dir.store())
                .with_activity(&dir.log_dir())
                .with_synced(synced.clone())
                .with_exclusions(dir.exclusions.clone())
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let receiver = Arc::new(receiver);
        let read_only = ReadOnly::mount(dir)?;
        let (stopper, signal) = stop_signal();
        let stopping = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let peers = with.peer_addresses.clone();
        let log = with.log.clone();
        let target = Target {
            receiver: receiver.clone(),
            store: dir.store(),
            synced: synced.clone(),
            path: dir.path.clone(),
        };
        let loop_ = Loop {
            signal,
            stopping: stopping.clone(),
            current: current.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("repl-recv-{}", dir.index))
            .spawn(move || receive(listeners, target, peers, loop_, log))
            .ok();
        Ok(ReceiverTask {
            receiver,
            stopper,
            stopping,
            current,
            thread,
            read_only: Some(read_only),
        })
    }

    /// `sync`: a clean stop (not a promotion, which must not wait for the
    /// disk): what was applied goes to disk first, recorded.
    pub(super) fn stop(mut self, log: &ModuleLog, sync: bool) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stopper.stop();
        let stream = self.current.lock().take();
        if let Some(stream) = &stream {
            // Reading only: what was received is applied, and the primary
            // told so, before the connection closes.
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
        if let Some(t) = self.thread.take() {
            // Bounded: a primary gone without a word (its host cut off) must
            // not hold the stop in a write to it.
            self.stopper.ended_within(LAST_WORD);
            if let Some(stream) = &stream {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            let _ = t.join();
        }
        // So a restart of this host does not make the next
        // resynchronisation compare checksums.
        if sync {
            if let Err(e) = self.receiver.sync() {
                log.write(LogLevel::Error, &e.to_string());
            }
        }
        if let Some(read_only) = self.read_only.take() {
            read_only.remove(log);
        }
    }
}

/// A read-only bind mount of a replicated directory over itself: local
/// processes cannot change the SECOND's copy, while its receiver writes
/// underneath through the directory descriptor it opened before.
struct ReadOnly {
    path: PathBuf,
    marker: PathBuf,
}

impl ReadOnly {
    /// Call only after the receiver opened the directory.
    fn mount(dir: &Dir) -> Result<Self, ReadOnlyError> {
        use nix::mount::{mount, MsFlags};
        let marker = dir.read_only_marker();
        // Before mounting: a crash right after leaves the marker to act on.
        std::fs::write(&marker, b"").map_err(|source| ReadOnlyError::Marker {
            path: marker.clone(),
            source,
        })?;
        let none = None::<&str>;
        let this = ReadOnly {
            path: dir.path.clone(),
            marker,
        };
        let failed = |source| ReadOnlyError::Mount {
            path: dir.path.clone(),
            source,
        };
        mount(Some(&dir.path), &dir.path, none, MsFlags::MS_BIND, none).map_err(failed)?;
        // A bind mount takes its own flags only at a remount.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(none, &dir.path, none, flags, none).map_err(failed)?;
        Ok(this)
    }

    fn remove(mut self, log: &ModuleLog) {
        if let Err(e) = self.unmount() {
            log.write(LogLevel::Error, &e.to_string());
        }
    }

    /// Lazily: a process working in the directory keeps a read-only view.
    fn unmount(&mut self) -> Result<(), ReadOnlyError> {
        if !self.marker.exists() {
            return Ok(());
        }
        nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH).map_err(|source| {
            ReadOnlyError::Unmount {
                path: self.path.clone(),
                source,
            }
        })?;
        std::fs::remove_file(&self.marker).map_err(|source| ReadOnlyError::Marker {
            path: self.marker.clone(),
            source,
        })
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// The copy a receiving loop applies to.
#[derive(Debug, Clone)]
struct Target {
    receiver: Arc<Receiver>,
    store: GenerationStore,
    /// Cleared when a change failed to apply (the copy is behind).
    synced: Arc<AtomicBool>,
    path: PathBuf,
}

/// What a receiving loop shares with the [`ReceiverTask`] that stops it.
struct Loop {
    signal: StopSignal,
    stopping: Arc<AtomicBool>,
    /// The connection being served.
    current: Arc<Mutex<Option<TcpStream>>>,
}

/// The receiving loop of one directory. A new connection from the peer
/// replaces the one being served: the primary connects again only once
/// its side of the old one is dead (one whose end never reached us, when
/// packets were dropped, would otherwise hold the receiver forever).
fn receive(
    listeners: Vec<TcpListener>,
    target: Target,
    peers: Vec<IpAddr>,
    with: Loop,
    log: ModuleLog,
) {
    let current = &with.current;
    let mut serving: Option<JoinHandle<()>> = None;
    let end_current = |serving: &mut Option<JoinHandle<()>>| {
        if let Some(old) = current.lock().take() {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = serving.take() {
            let _ = t.join();
        }
    };
    while !with.signal.stopped() {
        let mut accepted = None;
        for l in &listeners {
            if let Ok((stream, from)) = l.accept() {
                accepted = Some((stream, from));
                break;
            }
        }
        let Some((stream, from)) = accepted else {
            log.flush_refusals();
            if with.signal.pause(POLL) {
                break;
            }
            continue;
        };
        if !peers.contains(&from.ip()) {
            log.refused(Refusal {
                kind: RefusalKind {
                    what: "replication connection",
                    why: "not from the peer's address",
                },
                from,
                reason: format!("{} is not an address of the peer", from.ip()),
            });
            continue;
        }
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        end_current(&mut serving);
        match stream.try_clone() {
            Ok(c) => *current.lock() = Some(c),
            Err(_) => continue,
        }
        if with.signal.stopped() {
            break;
        }
        let (stopping, log, current) = (with.stopping.clone(), log.clone(), current.clone());
        let Target {
            receiver,
            store,
            synced,
            path,
        } = target.clone();
        serving = std::thread::Builder::new()
            .name("repl-serve".into())
            .spawn(move || {
                let path = path.display();
                let mut stream = stream;
                // Said once the handshake proved it is the peer: a
                // connection failing it is a refusal, summarised if
                // repeated.
                let result = receiver.accept(&mut stream).and_then(|session| {
                    log.write(
                        LogLevel::Info,
                        &format!("receiving replication of {path} from {from}"),
                    );
                    receiver.serve(stream, session)
                });
                // Closed at once: the primary must not wait on a connection
                // nobody reads any more.
                if let Some(s) = current.lock().take() {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
                match result {
                    Ok(()) => log.write(
                        LogLevel::Info,
                        &format!("replication of {path} from {from} ended"),
                    ),
                    Err(ReceiverError::Handshake(e)) => log.refused(Refusal {
                        kind: RefusalKind {
                            what: "replication connection",
                            why: "failed the handshake",
                        },
                        from,
                        reason: format!("replication of {path}: {e}"),
                    }),
                    Err(e) if stopping.load(Ordering::SeqCst) => {
                        tracing::debug!("replication receiver stopped: {e}")
                    }
                    Err(e) => {
                        // A change this copy did not apply: it is behind,
                        // never to be promoted (also after a restart) until
                        // a resynchronisation completes.
                        if matches!(
                            e,
                            ReceiverError::Apply { .. } | ReceiverError::Escape { .. }
                        ) {
                            let recorded = store.load().and_then(|g| {
                                let mut g = g.unwrap_or_default();
                                g.resync_begin();
                                store.save(&g)
                            });
                            if let Err(e) = recorded {
                                log.write(LogLevel::Error, &e.to_string());
                            }
                            synced.store(false, Ordering::SeqCst);
                        }
                        log.write(
                            LogLevel::Error,
                            &format!("replication of {path} from {from} failed: {e}"),
                        );
                    }
                }
            })
            .ok();
    }
    end_current(&mut serving);
}
