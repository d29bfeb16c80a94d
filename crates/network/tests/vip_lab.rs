//! Virtual IP and gratuitous ARP on real lab hosts (network namespaces on a
//! bridge; needs root, iproute2, util-linux, nft). Each test builds its own
//! lab, removed by the guard even when the test fails.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use holdfast_lab::{wait_until, Lab, LabSpec};
use holdfast_network::garp::{self, Announcement};
use holdfast_network::{NetworkError, Vip};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);
const PREFIX: u8 = 24;
const POLL: Duration = Duration::from_millis(50);
/// Well under the 5 s a Linux neighbour waits (DELAY) before re-probing a
/// stale entry, so only the gratuitous ARP can explain a switch this fast.
const GARP_SETTLE: Duration = Duration::from_secs(2);
/// Time for the first connection of a test (bridge ports still settling).
const SETTLE: Duration = Duration::from_secs(10);

fn lab(networks: usize) -> Lab {
    Lab::create(LabSpec {
        hosts: 2,
        networks,
        client: true,
    })
    .expect("creating the lab")
}

/// Output of `ip -n <host's netns> args...` in the machine's namespace.
fn ip(lab: &Lab, host: &str, args: &[&str]) -> String {
    let ns = lab.netns(host).unwrap();
    let out = Command::new("ip")
        .args(["-n", &ns])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "ip -n {ns} {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The word after `key` in `text`.
fn after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == key)?;
    words.next()
}

fn mac_of(lab: &Lab, host: &str) -> String {
    let link = ip(lab, host, &["-o", "link", "show", "eth0"]);
    after(&link, "link/ether").unwrap().to_string()
}

/// The MAC the client's ARP cache has for the VIP, if any.
fn client_arp_entry(lab: &Lab) -> Option<String> {
    let neigh = ip(
        lab,
        "client",
        &["neigh", "show", &VIP.to_string(), "dev", "eth0"],
    );
    after(&neigh, "lladdr").map(str::to_string)
}

/// A listener on `host` bound to the VIP (created inside the host's netns).
fn listen_on_vip(lab: &Lab, host: &str, port: u16) -> TcpListener {
    let listener = lab
        .run_in_netns(host, move || TcpListener::bind((VIP, port)))
        .unwrap()
        .unwrap_or_else(|e| panic!("binding {VIP}:{port} on {host}: {e}"));
    listener.set_nonblocking(true).unwrap();
    listener
}

/// Whether the client opens a TCP connection to `to` and sends a line,
/// within one second, with bash's /dev/tcp (a real process on the client).
fn client_connects(lab: &Lab, to: SocketAddr) -> bool {
    let script = format!("echo hello > /dev/tcp/{}/{}", to.ip(), to.port());
    lab.command("client", "timeout")
        .unwrap()
        .args(["1", "bash", "-c", &script])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Whether `listener` got a connection carrying "hello" (polled: the client
/// may have closed before we look, the data stays queued).
fn received_hello(listener: &TcpListener) -> bool {
    let mut got = false;
    wait_until(Duration::from_secs(2), POLL, || {
        if let Ok((mut stream, _)) = listener.accept() {
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            got = text.trim() == "hello";
        }
        got
    });
    got
}

#[test]
fn vip_moves_and_gratuitous_arp_redirects_the_client() {
    let lab = lab(1);
    let port = 8080;
    let to = SocketAddr::from((VIP, port));

    // Node1 becomes primary: the VIP's interface is found from its subnet.
    lab.run_in_netns("node1", || -> Result<(), NetworkError> {
        let interface = Vip::interface_for(VIP)?;
        assert_eq!(interface, "eth0");
        assert!(!Vip::holds(&interface, VIP)?);
        Vip::add(&interface, VIP, PREFIX)?;
        assert!(Vip::holds(&interface, VIP)?);
        garp::announce(&interface, VIP, &Announcement::default())
    })
    .unwrap()
    .unwrap();
    let on_node1 = listen_on_vip(&lab, "node1", port);
    assert!(
        wait_until(SETTLE, POLL, || client_connects(&lab, to)),
        "client never reached {to} on node1"
    );
    assert!(received_hello(&on_node1), "node1's listener got nothing");
    let (mac1, mac2) = (mac_of(&lab, "node1"), mac_of(&lab, "node2"));
    assert_ne!(mac1, mac2);
    assert_eq!(client_arp_entry(&lab).as_deref(), Some(mac1.as_str()));

    // Failover: node1 lets go, node2 takes the VIP.
    lab.run_in_netns("node1", || Vip::remove("eth0", VIP, PREFIX))
        .unwrap()
        .unwrap();
    assert!(!lab
        .run_in_netns("node1", || Vip::holds("eth0", VIP))
        .unwrap()
        .unwrap());
    drop(on_node1);
    lab.run_in_netns("node2", || Vip::add("eth0", VIP, PREFIX))
        .unwrap()
        .unwrap();
    let on_node2 = listen_on_vip(&lab, "node2", port);
    // Control: adding the address alone tells the client nothing.
    assert_eq!(
        client_arp_entry(&lab).as_deref(),
        Some(mac1.as_str()),
        "the client's cache changed before any announcement"
    );

    lab.run_in_netns("node2", || {
        garp::announce("eth0", VIP, &Announcement::default())
    })
    .unwrap()
    .unwrap();
    // The client's cache was not flushed: only the announcement moves it.
    assert!(
        wait_until(GARP_SETTLE, POLL, || client_arp_entry(&lab).as_deref()
            == Some(mac2.as_str())),
        "client still maps {VIP} to {:?}, not node2's {mac2}",
        client_arp_entry(&lab)
    );
    assert!(
        wait_until(GARP_SETTLE, POLL, || client_connects(&lab, to)),
        "client did not reach {to} on node2 within {GARP_SETTLE:?}"
    );
    assert!(received_hello(&on_node2), "node2's listener got nothing");
    lab.destroy().unwrap();
}

/// The node's IPv4 addresses, one line each, as `ip -o -4 addr` shows them.
fn addresses(lab: &Lab, host: &str) -> String {
    ip(lab, host, &["-o", "-4", "addr", "show"])
}

#[test]
fn add_and_remove_are_idempotent_and_bad_input_changes_nothing() {
    let lab = lab(2);
    let vip = VIP.to_string();
    lab.run_in_netns("node1", || -> Result<(), NetworkError> {
        Vip::add("eth0", VIP, PREFIX)?;
        Vip::add("eth0", VIP, PREFIX)?;
        assert!(Vip::holds("eth0", VIP)?);
        assert!(!Vip::holds("eth1", VIP)?);
        Ok(())
    })
    .unwrap()
    .unwrap();
    let with_vip = addresses(&lab, "node1");
    assert_eq!(
        with_vip.matches(&format!("inet {vip}/24")).count(),
        1,
        "{with_vip}"
    );

    // Bad interface names: a clear error, and the addresses stay as they were.
    let errors = lab
        .run_in_netns("node1", || {
            [
                Vip::add("nosuch0", VIP, PREFIX).unwrap_err(),
                Vip::remove("nosuch0", VIP, PREFIX).unwrap_err(),
                Vip::holds("nosuch0", VIP).unwrap_err(),
                garp::announce("nosuch0", VIP, &Announcement::default()).unwrap_err(),
                Vip::add("bad/name", VIP, PREFIX).unwrap_err(),
                Vip::add("eth0", VIP, 33).unwrap_err(),
                garp::announce("lo", VIP, &Announcement::default()).unwrap_err(),
            ]
        })
        .unwrap();
    for error in &errors[..4] {
        assert!(
            matches!(error, NetworkError::NoSuchInterface { interface } if interface == "nosuch0"),
            "{error}"
        );
        assert!(error.to_string().contains("\"nosuch0\""), "{error}");
    }
    assert!(
        matches!(errors[4], NetworkError::InvalidInterfaceName { .. }),
        "{}",
        errors[4]
    );
    assert!(
        matches!(errors[5], NetworkError::InvalidPrefix { .. }),
        "{}",
        errors[5]
    );
    assert!(
        matches!(errors[6], NetworkError::NotEthernet { .. }),
        "{}",
        errors[6]
    );
    assert_eq!(addresses(&lab, "node1"), with_vip);

    // Finding the interface: none, then two candidates, both refused.
    lab.run_in_netns("node1", || -> Result<(), NetworkError> {
        let elsewhere = Ipv4Addr::new(198, 19, 7, 7);
        assert!(matches!(
            Vip::interface_for(elsewhere),
            Err(NetworkError::NoInterfaceInSubnet { .. })
        ));
        assert_eq!(Vip::interface_for(Ipv4Addr::new(198, 18, 1, 60))?, "eth1");
        // A /15 on eth1 also covers network 0's subnet.
        let wide = Ipv4Addr::new(198, 18, 1, 61);
        Vip::add("eth1", wide, 15)?;
        match Vip::interface_for(Ipv4Addr::new(198, 18, 0, 60)) {
            Err(NetworkError::AmbiguousInterface { interfaces, .. }) => {
                assert_eq!(interfaces, ["eth0", "eth1"])
            }
            other => panic!("expected two candidates, got {other:?}"),
        }
        Vip::remove("eth1", wide, 15)?;
        Ok(())
    })
    .unwrap()
    .unwrap();

    // Removing twice, and removing with another prefix, are no-ops.
    lab.run_in_netns("node1", || -> Result<(), NetworkError> {
        Vip::remove("eth0", VIP, 32)?;
        assert!(Vip::holds("eth0", VIP)?, "a /32 removal took the /24");
        Vip::remove("eth0", VIP, PREFIX)?;
        Vip::remove("eth0", VIP, PREFIX)?;
        assert!(!Vip::holds("eth0", VIP)?);
        Ok(())
    })
    .unwrap()
    .unwrap();
    let after_removal = addresses(&lab, "node1");
    assert!(!after_removal.contains(&vip), "{after_removal}");
    // The node's own address was never touched.
    assert!(
        after_removal.contains("inet 198.18.0.11/24"),
        "{after_removal}"
    );
    lab.destroy().unwrap();
}
