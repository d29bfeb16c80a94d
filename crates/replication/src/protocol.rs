//! The replication wire: a handshake proving both sides hold the cluster
//! key, then length-prefixed frames, each with a sequence number and an
//! MAC over (session key, direction, sequence number, payload).
//!
//! Handshake (all sizes fixed):
//! 1. primary → secondary: `HFRP`, version, primary nonce (32 bytes)
//! 2. secondary → primary: `HFRP`, version, secondary nonce, proof
//!    `HMAC(key, "server" ‖ nonces)`
//! 3. primary → secondary: proof `HMAC(key, "client" ‖ nonces)`
//! 4. secondary → primary: one byte, 1 = accepted
//!
//! The session key is `HMAC(key, "session" ‖ nonces)`: fresh nonces from
//! both sides make every session's key new, so frames of an old session
//! cannot be replayed into a new one; within a session the sequence number
//! must grow by exactly one, and the direction byte keeps a frame from being
//! reflected back to its sender.
//!
//! Frame: `len: u32 BE` (of what follows) ‖ `seq: u64 BE` ‖ payload ‖ tag
//! (32: BLAKE3 keyed with the session key, over direction ‖ seq ‖ payload).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use bytes::Bytes;
use holdfast_key::{ClusterKey, SessionKey, TAG_LEN as TAG};
use rand::RngCore;

use crate::op::{Change, Op, Stamp};
use crate::resync::{Answer, Request};

const MAGIC: &[u8; 4] = b"HFRP";
/// 2: frames carry a [`Message`] (changes and resynchronisation requests).
/// 3: frames are authenticated with keyed BLAKE3 instead of HMAC-SHA256.
/// 4: acknowledgements say how far the secondary has applied; the answer
/// to `Generations` says whether its copy kept everything it applied.
/// 5: an acknowledgement covers every change up to the one it names.
/// 6: the answer to `Generations` carries an unclean primary's activity log.
/// 7: `Ensure` may make a name a hard link of another one.
const VERSION: u8 = 7;
const NONCE: usize = 32;
/// A frame's length prefix and sequence number.
pub const HEAD: usize = 12;
/// Larger than any change the file system produces (FUSE writes are at most
/// a few MiB), small enough that a bogus length cannot exhaust memory.
pub const MAX_FRAME: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("replication connection: {0}")]
    Io(#[from] io::Error),
    #[error("the peer does not speak the Holdfast replication protocol")]
    BadMagic,
    #[error(
        "the peer speaks replication protocol version {0}, this node {VERSION}: \
         run the same Holdfast version on both nodes"
    )]
    Version(u8),
    #[error("the peer could not prove it holds the cluster key")]
    Unauthenticated,
    #[error("the peer refused our proof of the cluster key")]
    Rejected,
    #[error("frame {seq}: authentication tag does not match (forged or corrupted)")]
    BadTag { seq: u64 },
    #[error("frame out of sequence: expected {expected}, got {got} (replayed or lost)")]
    OutOfSequence { expected: u64, got: u64 },
    #[error("frame of {0} bytes is outside the allowed sizes")]
    BadLength(usize),
    #[error("frame {seq} could not be decoded: {reason}")]
    Decode { seq: u64, reason: String },
}

/// Which way a frame travels; part of the authenticated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToSecondary,
    ToPrimary,
}

impl Direction {
    fn byte(self) -> u8 {
        match self {
            Direction::ToSecondary => b'S',
            Direction::ToPrimary => b'P',
        }
    }
}

/// The proof that one side holds the cluster key: its MAC over `label`
/// and both sides' nonces.
fn proof(key: &ClusterKey, label: &[u8], primary: &[u8], secondary: &[u8]) -> [u8; TAG] {
    key.tag([label, primary, secondary])
}

fn check_proof(
    key: &ClusterKey,
    label: &[u8],
    primary: &[u8],
    secondary: &[u8],
    tag: &[u8],
) -> bool {
    key.verify([label, primary, secondary], tag)
}

fn nonce() -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

fn read_hello(stream: &mut impl Read) -> Result<[u8; NONCE], ProtocolError> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head)?;
    if &head[..4] != MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    if head[4] != VERSION {
        return Err(ProtocolError::Version(head[4]));
    }
    let mut n = [0u8; NONCE];
    stream.read_exact(&mut n)?;
    Ok(n)
}

fn hello(n: &[u8; NONCE]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + NONCE);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(n);
    out
}

/// The primary's side of the handshake.
pub fn primary_handshake<S: Read + Write>(
    stream: &mut S,
    key: &ClusterKey,
) -> Result<SessionKey, ProtocolError> {
    let ours = nonce();
    stream.write_all(&hello(&ours))?;
    let theirs = read_hello(stream)?;
    let mut their_proof = [0u8; 32];
    stream.read_exact(&mut their_proof)?;
    if !check_proof(key, b"server", &ours, &theirs, &their_proof) {
        return Err(ProtocolError::Unauthenticated);
    }
    stream.write_all(&proof(key, b"client", &ours, &theirs))?;
    let mut verdict = [0u8; 1];
    stream.read_exact(&mut verdict)?;
    if verdict[0] != 1 {
        return Err(ProtocolError::Rejected);
    }
    Ok(key.session([&b"session"[..], &ours, &theirs]))
}

/// The secondary's side of the handshake.
pub fn secondary_handshake<S: Read + Write>(
    stream: &mut S,
    key: &ClusterKey,
) -> Result<SessionKey, ProtocolError> {
    let ours = nonce();
    let theirs = match read_hello(stream) {
        Ok(theirs) => theirs,
        Err(e @ ProtocolError::Version(_)) => {
            // Best effort: our version tells the primary why we close.
            let _ = stream.write_all(&hello(&ours));
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let mut out = hello(&ours);
    out.extend_from_slice(&proof(key, b"server", &theirs, &ours));
    stream.write_all(&out)?;
    let mut their_proof = [0u8; 32];
    stream.read_exact(&mut their_proof)?;
    if !check_proof(key, b"client", &theirs, &ours, &their_proof) {
        // Best effort: tell the primary why before closing.
        let _ = stream.write_all(&[0]);
        return Err(ProtocolError::Unauthenticated);
    }
    stream.write_all(&[1])?;
    Ok(key.session([&b"session"[..], &theirs, &ours]))
}

/// What a frame's tag covers: direction ‖ seq ‖ payload.
fn frame_parts<'a>(
    direction: &'a [u8; 1],
    seq: &'a [u8; 8],
    payload: &'a [&'a [u8]],
) -> impl Iterator<Item = &'a [u8]> {
    [&direction[..], &seq[..]]
        .into_iter()
        .chain(payload.iter().copied())
}

/// Seals outgoing frames of one direction, numbering them from 0.
#[derive(Debug)]
pub struct Sealer {
    key: SessionKey,
    direction: Direction,
    next: u64,
}

impl Sealer {
    pub fn new(key: SessionKey, direction: Direction) -> Self {
        Sealer {
            key,
            direction,
            next: 0,
        }
    }

    /// The sequence number the next sealed frame will carry.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The complete frame (length prefix included) for `payload`.
    pub fn seal(&mut self, payload: &[u8]) -> Vec<u8> {
        let (head, tag) = self.seal_parts(&[payload]);
        let mut frame = Vec::with_capacity(head.len() + payload.len() + TAG);
        frame.extend_from_slice(&head);
        frame.extend_from_slice(payload);
        frame.extend_from_slice(&tag);
        frame
    }

    /// What goes before and after the payload (the concatenation of
    /// `parts`) in its frame, so a large payload can be sent where it
    /// lies, in pieces, without copying it into a frame.
    pub fn seal_parts(&mut self, parts: &[&[u8]]) -> ([u8; HEAD], [u8; TAG]) {
        let seq = self.next;
        self.next += 1;
        let tag = self.key.tag(frame_parts(
            &[self.direction.byte()],
            &seq.to_be_bytes(),
            parts,
        ));
        let len = 8 + parts.iter().map(|p| p.len()).sum::<usize>() + TAG;
        let mut head = [0u8; HEAD];
        head[..4].copy_from_slice(&(len as u32).to_be_bytes());
        head[4..].copy_from_slice(&seq.to_be_bytes());
        (head, tag)
    }
}

/// Reads and verifies incoming frames of one direction, in sequence.
#[derive(Debug)]
pub struct Opener {
    key: SessionKey,
    direction: Direction,
    expected: u64,
}

impl Opener {
    pub fn new(key: SessionKey, direction: Direction) -> Self {
        Opener {
            key,
            direction,
            expected: 0,
        }
    }

    /// The next frame's sequence number and payload; `None` when the peer
    /// closed the connection between frames.
    pub fn read(
        &mut self,
        stream: &mut impl Read,
    ) -> Result<Option<(u64, Vec<u8>)>, ProtocolError> {
        let mut len = [0u8; 4];
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(8 + TAG..=MAX_FRAME).contains(&len) {
            return Err(ProtocolError::BadLength(len));
        }
        // Read in place: a write's data is not copied again here.
        let mut seq = [0u8; 8];
        stream.read_exact(&mut seq)?;
        let seq = u64::from_be_bytes(seq);
        // Not zeroed first: filled from the stream directly.
        let want = len - 8 - TAG;
        let mut payload = Vec::with_capacity(want);
        stream.take(want as u64).read_to_end(&mut payload)?;
        if payload.len() != want {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let mut tag = [0u8; TAG];
        stream.read_exact(&mut tag)?;
        let direction = [self.direction.byte()];
        if !self.key.verify(
            frame_parts(&direction, &seq.to_be_bytes(), &[&payload]),
            &tag,
        ) {
            return Err(ProtocolError::BadTag { seq });
        }
        if seq != self.expected {
            return Err(ProtocolError::OutOfSequence {
                expected: self.expected,
                got: seq,
            });
        }
        self.expected += 1;
        Ok(Some((seq, payload)))
    }
}

/// What the primary sends (payload of its frames).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Message {
    /// A change of the live stream (or a block of a resynchronisation).
    Change(Change),
    /// A resynchronisation request, answered in stream order.
    Resync(Request),
}

impl Message {
    /// Decodes a message; a write's data is not copied but shared with
    /// `payload` (the frame as read).
    pub fn decode(payload: Vec<u8>) -> Result<Message, postcard::Error> {
        // A write's encoding (see the sender's `Payload`): `Message::Change`
        // (0), `Op::Write` (0), path, offset and the data's length; the
        // data; the stamps.
        type WriteHead<'a> = (u32, u32, &'a [u8], u64, usize);
        let write = match postcard::take_from_bytes::<WriteHead<'_>>(&payload) {
            Ok(((0, 0, path, offset, len), rest)) if len <= rest.len() => {
                let stamps: Vec<Stamp> = postcard::from_bytes(&rest[len..])?;
                let path = PathBuf::from(OsString::from_vec(path.to_vec()));
                Some((path, offset, payload.len() - rest.len(), len, stamps))
            }
            _ => None,
        };
        let Some((path, offset, start, len, stamps)) = write else {
            return postcard::from_bytes(&payload);
        };
        let data = Bytes::from(payload).slice(start..start + len);
        Ok(Message::Change(Change {
            op: Op::Write { path, offset, data },
            stamps,
        }))
    }
}

/// What the secondary answers about one change (payload of its frames).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reply {
    /// Every change up to and including `upto` was received (or applied
    /// and synced, in durable mode); the requests among them are answered
    /// on their own. Every frame numbered below `applied` is applied (with
    /// receipt acks, `applied` may be `upto` or less: these are not yet).
    Ack { upto: u64, applied: u64 },
    /// The answer to a [`Message::Resync`] request, after it was handled.
    Answer { seq: u64, answer: Answer },
    /// Not applied, or failed to apply: the copies may differ from here on.
    Refused { seq: u64, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair(
        a: &ClusterKey,
        b: &ClusterKey,
    ) -> (
        Result<SessionKey, ProtocolError>,
        Result<SessionKey, ProtocolError>,
    ) {
        let (mut x, mut y) = UnixStream::pair().unwrap();
        let b = b.clone();
        let t = std::thread::spawn(move || secondary_handshake(&mut y, &b));
        let p = primary_handshake(&mut x, a);
        drop(x);
        (p, t.join().unwrap())
    }

    #[test]
    fn same_key_agrees_on_a_fresh_session_key() {
        let key = ClusterKey::generate();
        let (p, s) = pair(&key, &key);
        let (p, s) = (p.unwrap(), s.unwrap());
        // Keys are secret (no equality): the same key verifies the other's tag.
        let same = |a: &SessionKey, b: &SessionKey| b.verify([&b"x"[..]], &a.tag([&b"x"[..]]));
        assert!(same(&p, &s));
        let (p2, _) = pair(&key, &key);
        assert!(!same(&p, &p2.unwrap()), "nonces make each session key new");
    }

    #[test]
    fn different_keys_fail_on_both_sides() {
        let (p, s) = pair(&ClusterKey::generate(), &ClusterKey::generate());
        assert!(matches!(p, Err(ProtocolError::Unauthenticated)), "{p:?}");
        assert!(s.is_err());
    }

    #[test]
    fn another_protocol_version_is_refused_on_both_sides_with_a_clear_error() {
        let key = ClusterKey::generate();
        let old_hello = |stream: &mut UnixStream| {
            let mut hello = MAGIC.to_vec();
            hello.push(VERSION - 1);
            hello.extend_from_slice(&[0; NONCE]);
            stream.write_all(&hello).unwrap();
        };
        // An older primary: the secondary refuses, and says its version.
        let (mut primary, mut secondary) = UnixStream::pair().unwrap();
        let k = key.clone();
        let t = std::thread::spawn(move || secondary_handshake(&mut secondary, &k));
        old_hello(&mut primary);
        let err = t.join().unwrap().unwrap_err();
        assert!(
            matches!(err, ProtocolError::Version(v) if v == VERSION - 1),
            "{err}"
        );
        assert!(err.to_string().contains("same Holdfast version"), "{err}");
        // Its hello tells the older primary which version it speaks.
        let mut head = [0u8; 5];
        primary.read_exact(&mut head).unwrap();
        assert_eq!((&head[..4], head[4]), (&MAGIC[..], VERSION));
        // An older secondary: the primary refuses.
        let (mut primary, mut secondary) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            read_hello(&mut secondary).unwrap();
            old_hello(&mut secondary);
        });
        let err = primary_handshake(&mut primary, &key).unwrap_err();
        t.join().unwrap();
        assert!(
            matches!(err, ProtocolError::Version(v) if v == VERSION - 1),
            "{err}"
        );
    }

    #[test]
    fn messages_decode_as_they_were_encoded() {
        use crate::op::Time;
        let stamps = vec![Stamp {
            path: "d/f".into(),
            mtime: Time { sec: -1, nsec: 7 },
        }];
        let write = |data: Vec<u8>| {
            Message::Change(Change {
                op: Op::Write {
                    path: PathBuf::from(OsString::from_vec(b"d/f\xff".to_vec())),
                    offset: u64::MAX,
                    data: data.into(),
                },
                stamps: stamps.clone(),
            })
        };
        let others = [
            Message::Change(Change {
                op: Op::Fsync { path: "".into() },
                stamps: stamps.clone(),
            }),
            Message::Change(Change {
                op: Op::Unlink { path: "x".into() },
                stamps: vec![],
            }),
            Message::Resync(Request::Generations),
        ];
        for message in [write(vec![]), write(vec![9; 100_000])]
            .into_iter()
            .chain(others)
        {
            let encoded = postcard::to_allocvec(&message).unwrap();
            assert_eq!(Message::decode(encoded).unwrap(), message);
        }
        // Cut short: an error, as for any message.
        let mut short = postcard::to_allocvec(&write(vec![1; 10])).unwrap();
        short.truncate(short.len() - 12);
        assert!(Message::decode(short).is_err());
    }

    #[test]
    fn frames_detect_forgery_replay_and_reflection() {
        let key = ClusterKey::generate().session([&b"session"[..]]);
        let mut sealer = Sealer::new(key.clone(), Direction::ToSecondary);
        let f0 = sealer.seal(b"zero");
        let f1 = sealer.seal(b"one");

        let mut opener = Opener::new(key.clone(), Direction::ToSecondary);
        assert_eq!(
            opener.read(&mut &f0[..]).unwrap(),
            Some((0, b"zero".to_vec()))
        );
        assert!(matches!(
            opener.read(&mut &f0[..]),
            Err(ProtocolError::OutOfSequence {
                expected: 1,
                got: 0
            })
        ));
        let mut forged = f1.clone();
        forged[13] ^= 1;
        assert!(matches!(
            opener.read(&mut &forged[..]),
            Err(ProtocolError::BadTag { seq: 1 })
        ));
        assert_eq!(
            opener.read(&mut &f1[..]).unwrap(),
            Some((1, b"one".to_vec()))
        );
        assert_eq!(opener.read(&mut &[][..]).unwrap(), None);

        let mut reflected = Opener::new(key, Direction::ToPrimary);
        assert!(matches!(
            reflected.read(&mut &f0[..]),
            Err(ProtocolError::BadTag { .. })
        ));
    }
}
