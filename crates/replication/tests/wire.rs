//! The replication connection: authentication, forged frames, paths
//! escaping the directory, connection loss. Loopback TCP only, no FUSE.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use holdfast_key::ClusterKey;
use holdfast_replication::protocol::{
    primary_handshake, secondary_handshake, Direction, Message, Opener, ProtocolError, Reply,
    Sealer,
};
use holdfast_replication::{
    AckMode, Change, Op, Receiver, ReceiverError, ReplicationError, Replicator, TcpReplicator,
};

/// A receiver acknowledging after the durable apply, serving one
/// connection on 127.0.0.1 into `dir`.
fn receiver(dir: &Path, key: &ClusterKey) -> (SocketAddr, JoinHandle<Result<(), ReceiverError>>) {
    receiver_in(dir, key, AckMode::Durable)
}

fn receiver_in(
    dir: &Path,
    key: &ClusterKey,
    mode: AckMode,
) -> (SocketAddr, JoinHandle<Result<(), ReceiverError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::new(dir, key.clone(), mode).unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        receiver.serve_connection(stream)
    });
    (addr, handle)
}

fn mkdir(path: &str) -> Change {
    Change {
        op: Op::Mkdir {
            path: path.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        stamps: vec![],
    }
}

fn create(path: &str) -> Change {
    Change {
        op: Op::Create {
            path: path.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        stamps: vec![],
    }
}

fn dirs() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let secondary = tmp.path().join("secondary");
    std::fs::create_dir(&secondary).unwrap();
    (tmp, secondary)
}

/// A primary speaking the protocol by hand: its stream, sealer and opener.
fn raw_primary(addr: SocketAddr, key: &ClusterKey) -> (TcpStream, Sealer, Opener) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let session = primary_handshake(&mut stream, key).unwrap();
    let sealer = Sealer::new(session.clone(), Direction::ToSecondary);
    (stream, sealer, Opener::new(session, Direction::ToPrimary))
}

/// The next frame carrying `change`, its payload altered if `forged`.
fn frame(sealer: &mut Sealer, change: Change, forged: bool) -> Vec<u8> {
    let mut frame = sealer.seal(&postcard::to_allocvec(&Message::Change(change)).unwrap());
    if forged {
        let last = frame.len() - 40;
        frame[last] ^= 0x55; // inside the payload
    }
    frame
}

#[test]
fn replicated_changes_are_applied_in_order() {
    let (_tmp, dir) = dirs();
    let key = ClusterKey::generate();
    let (addr, rx) = receiver(&dir, &key);
    let tx = TcpReplicator::connect(addr, &key).unwrap();
    tx.replicate(&mkdir("a")).unwrap();
    // Submitted together, waited for afterwards: pipelined, applied in order.
    let acks: Vec<_> = ["a/f", "a/g"]
        .into_iter()
        .map(|p| tx.submit(&create(p)).unwrap())
        .collect();
    for ack in acks {
        ack.wait().unwrap();
    }
    assert!(dir.join("a/f").is_file() && dir.join("a/g").is_file());
    drop(tx);
    rx.join().unwrap().unwrap();
}

#[test]
fn an_fsync_is_acknowledged_as_the_mode_says() {
    // An fsync in a directory the secondary lacks fails there: the outcome
    // the primary sees tells whether the acknowledgement waited for the sync.
    let fsync = Change {
        op: Op::Fsync {
            path: "missing/f".into(),
        },
        stamps: vec![],
    };
    for mode in [AckMode::Receipt, AckMode::Durable] {
        let (_tmp, dir) = dirs();
        let key = ClusterKey::generate();
        let (addr, rx) = receiver_in(&dir, &key, mode);
        let tx = TcpReplicator::connect(addr, &key).unwrap();
        let acked = tx.replicate(&fsync);
        match mode {
            // On receipt, before the secondary's own fsync.
            AckMode::Receipt => assert_eq!(acked, Ok(()), "{mode:?}"),
            // Only once synced there: this one never is.
            AckMode::Durable => assert!(
                matches!(acked, Err(ReplicationError::Refused { seq: 0, .. })),
                "{mode:?}: {acked:?}"
            ),
        }
        // Either way the failure stops the stream: the copies may differ.
        assert!(matches!(
            rx.join().unwrap(),
            Err(ReceiverError::Apply { seq: 0, .. })
        ));
        assert!(tx.replicate(&mkdir("after")).is_err(), "{mode:?}");
        assert!(!dir.join("after").exists());
    }
}

#[test]
fn frames_received_together_are_acknowledged_together_and_all_applied() {
    let (_tmp, dir) = dirs();
    let key = ClusterKey::generate();
    let (addr, rx) = receiver_in(&dir, &key, AckMode::Receipt);
    let (mut stream, mut sealer, mut opener) = raw_primary(addr, &key);
    let mut frames = Vec::new();
    for path in ["a", "a/b", "a/b/c"] {
        frames.extend(frame(&mut sealer, mkdir(path), false));
    }
    // One write: the secondary reads the three frames at once.
    stream.write_all(&frames).unwrap();
    let (_, reply) = opener.read(&mut stream).unwrap().unwrap();
    assert_eq!(
        postcard::from_bytes::<Reply>(&reply).unwrap(),
        Reply::Ack {
            upto: 2,
            applied: 0
        },
        "one acknowledgement for the three, before applying them"
    );
    // A forged frame ends the session; what was acknowledged is applied.
    stream
        .write_all(&frame(&mut sealer, mkdir("x"), true))
        .unwrap();
    let result = rx.join().unwrap();
    assert!(
        matches!(
            result,
            Err(ReceiverError::Protocol(ProtocolError::BadTag { seq: 3 }))
        ),
        "{result:?}"
    );
    assert!(dir.join("a/b/c").is_dir());
    assert!(!dir.join("x").exists());
}

#[test]
fn an_idle_secondary_says_it_applied_what_it_acknowledged_on_receipt() {
    let (_tmp, dir) = dirs();
    let key = ClusterKey::generate();
    let (addr, rx) = receiver_in(&dir, &key, AckMode::Receipt);
    let tx = TcpReplicator::connect(addr, &key).unwrap();
    for name in ["a", "b", "c"] {
        tx.replicate(&mkdir(name)).unwrap();
    }
    // Acknowledged on receipt: applied once the applier is done, which the
    // primary learns when the stream goes quiet (it would not re-send them).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tx.applied() != Some(3) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(tx.applied(), Some(3));
    assert!(dir.join("c").is_dir());
    drop(tx);
    rx.join().unwrap().unwrap();
}

#[test]
fn a_secondary_stopping_says_it_applied_everything_it_received() {
    let (_tmp, dir) = dirs();
    let key = ClusterKey::generate();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::new(&dir, key.clone(), AckMode::Receipt).unwrap();
    let (tx_stream, rx_stream) = std::sync::mpsc::channel();
    let rx = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        tx_stream.send(stream.try_clone().unwrap()).unwrap();
        receiver.serve_connection(stream)
    });
    let tx = TcpReplicator::connect(addr, &key).unwrap();
    let served = rx_stream.recv().unwrap();
    let acks: Vec<_> = (0..200)
        .map(|i| tx.submit(&mkdir(&format!("d{i}"))).unwrap())
        .collect();
    for ack in acks {
        ack.wait().unwrap();
    }
    // Stopped as the daemon stops it: its reading side closed.
    served.shutdown(std::net::Shutdown::Read).unwrap();
    rx.join().unwrap().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tx.applied() != Some(200) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(tx.applied(), Some(200));
    assert!(dir.join("d199").is_dir());
}

#[test]
fn wrong_key_is_refused_at_connection() {
    let (_tmp, dir) = dirs();
    let (addr, rx) = receiver(&dir, &ClusterKey::generate());
    let err = TcpReplicator::connect(addr, &ClusterKey::generate()).unwrap_err();
    assert!(matches!(err, ReplicationError::Connect(_)), "{err}");
    assert!(matches!(
        rx.join().unwrap(),
        Err(ReceiverError::Handshake(
            ProtocolError::Unauthenticated | ProtocolError::Io(_)
        ))
    ));
}

#[test]
fn forged_and_replayed_frames_are_rejected() {
    for tamper in ["forge", "replay"] {
        let (_tmp, dir) = dirs();
        let key = ClusterKey::generate();
        let (addr, rx) = receiver(&dir, &key);
        let (mut stream, mut sealer, mut opener) = raw_primary(addr, &key);

        let genuine = frame(&mut sealer, mkdir("genuine"), false);
        stream.write_all(&genuine).unwrap();
        let (_, reply) = opener.read(&mut stream).unwrap().unwrap();
        assert_eq!(
            postcard::from_bytes::<Reply>(&reply).unwrap(),
            Reply::Ack {
                upto: 0,
                applied: 1
            }
        );

        let bad = match tamper {
            "forge" => frame(&mut sealer, mkdir("forged"), true),
            _ => genuine,
        };
        stream.write_all(&bad).unwrap();
        let result = rx.join().unwrap();
        match tamper {
            "forge" => assert!(
                matches!(
                    result,
                    Err(ReceiverError::Protocol(ProtocolError::BadTag { seq: 1 }))
                ),
                "{result:?}"
            ),
            _ => assert!(
                matches!(
                    result,
                    Err(ReceiverError::Protocol(ProtocolError::OutOfSequence {
                        expected: 1,
                        got: 0
                    }))
                ),
                "{result:?}"
            ),
        }
        assert!(dir.join("genuine").is_dir());
        assert!(!dir.join("forged").exists());
    }
}

#[test]
fn paths_escaping_the_directory_are_refused() {
    let (tmp, dir) = dirs();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    for path in [
        "../escape",
        "sub/../../escape",
        "/tmp/holdfast-escape",
        "link/escape",
    ] {
        let key = ClusterKey::generate();
        let (addr, rx) = receiver(&dir, &key);
        let tx = TcpReplicator::connect(addr, &key).unwrap();
        let err = tx.replicate(&create(path)).unwrap_err();
        assert!(
            matches!(err, ReplicationError::Refused { seq: 0, .. }),
            "{path}: {err}"
        );
        // The connection is unusable after a refusal: the copies may differ.
        assert!(tx.replicate(&mkdir("after")).is_err());
        let result = rx.join().unwrap();
        assert!(
            matches!(result, Err(ReceiverError::Escape { seq: 0, .. })),
            "{path}: {result:?}"
        );
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!tmp.path().join("escape").exists());
    assert!(!Path::new("/tmp/holdfast-escape").exists());
    assert!(!dir.join("after").exists());
}

#[test]
fn connection_loss_fails_every_waiter() {
    let key = ClusterKey::generate();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_key = key.clone();
    // A secondary that authenticates, reads two frames, never acknowledges, dies.
    let fake = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let session = secondary_handshake(&mut stream, &server_key).unwrap();
        let mut opener = Opener::new(session, Direction::ToSecondary);
        opener.read(&mut stream).unwrap().unwrap();
        opener.read(&mut stream).unwrap().unwrap();
    });
    let tx = TcpReplicator::connect(addr, &key).unwrap();
    let (told, broke) = std::sync::mpsc::channel();
    let hook = told.clone();
    tx.on_break(move || hook.send("watching").unwrap());
    let a = tx.submit(&mkdir("a")).unwrap();
    let b = tx.submit(&mkdir("b")).unwrap();
    fake.join().unwrap();
    assert!(matches!(a.wait(), Err(ReplicationError::Disconnected(_))));
    assert!(matches!(b.wait(), Err(ReplicationError::Disconnected(_))));
    assert!(tx.replicate(&mkdir("c")).is_err());
    let timeout = std::time::Duration::from_secs(5);
    assert_eq!(
        broke.recv_timeout(timeout),
        Ok("watching"),
        "told once broken"
    );
    tx.on_break(move || told.send("late").unwrap());
    assert_eq!(
        broke.try_recv(),
        Ok("late"),
        "a hook registered once broken is called at once"
    );
}

#[test]
fn a_live_change_to_an_entry_not_yet_resynchronised_is_left_to_the_resync() {
    live_change_during_a_resync(AckMode::Durable);
}

/// The same with receipt acknowledgements, where the secondary's reader
/// applies light changes itself when its applier is idle.
#[test]
fn a_live_change_acknowledged_on_receipt_is_left_to_the_resync_too() {
    live_change_during_a_resync(AckMode::Receipt);
}

fn live_change_during_a_resync(mode: AckMode) {
    use holdfast_replication::resync::{Peer, Request};
    use holdfast_replication::GenerationStore;
    let (tmp, dir) = dirs();
    let key = ClusterKey::generate();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::new(&dir, key.clone(), mode)
        .unwrap()
        .with_generations(GenerationStore::new(&tmp.path().join("gen")));
    let rx = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        receiver.serve_connection(stream)
    });
    let tx = TcpReplicator::connect(addr, &key).unwrap();
    let write = |path: &str| Change {
        op: Op::Write {
            path: path.into(),
            offset: 0,
            data: b"x".to_vec().into(),
        },
        stamps: vec![],
    };
    // During a resynchronisation the entry comes later, as on the primary.
    tx.ask(&Request::Begin { source: 7 }).unwrap();
    tx.replicate(&write("not-yet/f")).unwrap();
    tx.ask(&Request::End { source: 7 }).unwrap();
    assert!(!dir.join("not-yet").exists());
    // Outside one, the copies would differ: refused — at once, or, when
    // acknowledged on receipt, in answer to what follows.
    let err = tx
        .replicate(&write("missing"))
        .and_then(|()| tx.ask(&Request::End { source: 7 }).map(drop))
        .unwrap_err();
    assert!(
        matches!(&err, ReplicationError::Refused { reason, .. } if reason.contains("No such file")),
        "{err}"
    );
    drop(tx);
    assert!(matches!(
        rx.join().unwrap(),
        Err(ReceiverError::Apply { .. })
    ));
}

/// An `Ensure` making a name a hard link of another that leaves the
/// directory, names no regular file, or names itself is refused with a
/// clear error, and changes nothing.
#[test]
fn a_bad_link_in_an_ensure_is_refused_and_changes_nothing() {
    use holdfast_replication::entry::{Attributes, EntryState};
    use holdfast_replication::resync::{Peer, Request};
    let (tmp, dir) = dirs();
    std::fs::write(tmp.path().join("outside"), b"outside").unwrap();
    std::fs::write(dir.join("victim"), b"victim").unwrap();
    std::fs::create_dir(dir.join("d")).unwrap();
    let file = Attributes {
        mode: 0o100644,
        uid: 0,
        gid: 0,
        size: 7,
        nlink: 2,
        rdev: 0,
        mtime: holdfast_replication::Time { sec: 0, nsec: 0 },
        target: Vec::new(),
        xattrs: Vec::new(),
        fresh: false,
        link: None,
    };
    let cases = [
        (
            "victim",
            0o100644,
            "../outside",
            "outside the replicated directory",
        ),
        ("victim", 0o100644, "d", "Invalid argument"),
        ("victim", 0o100644, "missing", "No such file"),
        ("victim", 0o100644, "victim", "Invalid argument"),
        // Only a regular file is linked.
        ("new-dir", 0o040755, "victim", "Invalid argument"),
    ];
    for (path, mode, link, reason) in cases {
        let key = ClusterKey::generate();
        let (addr, rx) = receiver(&dir, &key);
        let tx = TcpReplicator::connect(addr, &key).unwrap();
        let state = EntryState::Present(Attributes {
            mode,
            link: Some(link.into()),
            ..file.clone()
        });
        let err = tx
            .ask(&Request::Ensure {
                path: path.into(),
                state,
            })
            .unwrap_err();
        assert!(
            matches!(&err, ReplicationError::Refused { reason: r, .. } if r.contains(reason)),
            "{link}: {err}"
        );
        drop(tx);
        assert!(rx.join().unwrap().is_err(), "{link}");
        assert_eq!(std::fs::read(dir.join("victim")).unwrap(), b"victim");
        let md = std::fs::metadata(dir.join("victim")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&md), 1, "{link}");
        assert!(!dir.join("new-dir").exists());
    }
    assert_eq!(
        std::fs::read(tmp.path().join("outside")).unwrap(),
        b"outside"
    );
}
