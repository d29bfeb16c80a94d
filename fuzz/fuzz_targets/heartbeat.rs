//! Heartbeat datagrams: as received (the tag checked first), and with a
//! valid tag appended, so that what follows the check — the body's
//! decoding — meets arbitrary bytes too.
#![no_main]

use holdfast_key::ClusterKey;
use holdfast_membership::Heartbeat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_hex(&"5a".repeat(32)).unwrap();
    let _ = Heartbeat::decode(data, &key);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&key.tag([data]));
    if let Ok(heartbeat) = Heartbeat::decode(&sealed, &key) {
        // What decodes encodes and decodes back the same.
        assert_eq!(
            Heartbeat::decode(&heartbeat.encode(&key), &key).unwrap(),
            heartbeat
        );
    }
});
