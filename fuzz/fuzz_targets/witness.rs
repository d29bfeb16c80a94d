//! The witness's datagrams, lease requests (the witness reads them) and
//! replies (a node reads them): as received, and with a valid tag appended.
#![no_main]

use holdfast_key::ClusterKey;
use holdfast_membership::lease::{LeaseReply, LeaseRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_hex(&"a5".repeat(32)).unwrap();
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&key.tag([data]));
    for datagram in [data, &sealed[..]] {
        if let Ok(request) = LeaseRequest::decode(datagram, &key) {
            assert_eq!(
                LeaseRequest::decode(&request.encode(&key), &key).unwrap(),
                request
            );
        }
        if let Ok(reply) = LeaseReply::decode(datagram, &key) {
            assert_eq!(
                LeaseReply::decode(&reply.encode(&key), &key).unwrap(),
                reply
            );
        }
    }
});
