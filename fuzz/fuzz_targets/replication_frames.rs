//! The replication stream as a secondary and a primary read it: the
//! handshake, frames (length, sequence, tag), and the payloads behind a
//! valid tag — the primary's messages and the secondary's replies.
#![no_main]

use std::io::{Cursor, Read, Write};

use holdfast_key::ClusterKey;
use holdfast_replication::protocol::{
    secondary_handshake, Direction, Message, Opener, Reply, Sealer,
};
use libfuzzer_sys::fuzz_target;

/// Reads the input, swallows what is written.
struct Stream<'a>(Cursor<&'a [u8]>);

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Stream<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_hex(&"3c".repeat(32)).unwrap();
    let _ = secondary_handshake(&mut Stream(Cursor::new(data)), &key);

    // Raw frames: nothing passes the tag, but the lengths are read first.
    let session = key.session([&b"fuzz"[..]]);
    let mut opener = Opener::new(session.clone(), Direction::ToSecondary);
    let mut raw = Cursor::new(data);
    for _ in 0..16 {
        if !matches!(opener.read(&mut raw), Ok(Some(_))) {
            break;
        }
    }

    // The payload sealed as a frame, read back and decoded both ways.
    let frame = Sealer::new(session.clone(), Direction::ToSecondary).seal(data);
    let mut opener = Opener::new(session, Direction::ToSecondary);
    let (_, payload) = opener.read(&mut Cursor::new(&frame[..])).unwrap().unwrap();
    assert_eq!(payload, data);
    if let Ok(message) = Message::decode(payload) {
        // A write's data is sliced out of the frame: it must be the
        // same message a plain decoding gives.
        if let Ok(plain) = postcard::from_bytes::<Message>(data) {
            assert_eq!(plain, message);
        }
    }
    let _ = postcard::from_bytes::<Reply>(data);
});
