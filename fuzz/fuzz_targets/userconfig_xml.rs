//! SafeKit's `userconfig.xml` import, with the nodes given explicitly or by
//! a `cluster.xml` (the input's part after its first NUL byte, if any).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use holdfast_config::{import_userconfig, ImportOptions, ModuleId, NodeSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let nodes = [
        (
            "node1".to_string(),
            vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11))],
        ),
        (
            "node2".to_string(),
            vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 12))],
        ),
    ];
    let (userconfig, nodes) = match text.split_once('\0') {
        Some((userconfig, cluster)) => (
            userconfig,
            NodeSource::Cluster(cluster, Path::new("cluster.xml")),
        ),
        None => (text, NodeSource::Explicit(&nodes)),
    };
    let options = ImportOptions {
        name: "fuzz",
        id: ModuleId(1),
        nodes,
    };
    let _ = import_userconfig(userconfig, Path::new("userconfig.xml"), &options);
});
