//! Gratuitous ARP: after a virtual IP moves to this node, tell the segment
//! so neighbours replace the old owner's MAC in their ARP cache at once
//! instead of after their entry goes stale (tens of seconds on Linux).
//!
//! Each round sends two broadcast frames, because equipment differs in which
//! it honours: an ARP request (RFC 5227 announcement: sender and target IP
//! both the VIP) and an ARP reply (target hardware address = sender's, which
//! Linux requires to treat a reply as gratuitous). Linux neighbours update an
//! existing entry from either, overriding its lock time.
//!
//! Frames go out of an `AF_PACKET` raw socket opened in the calling thread's
//! network namespace; the Ethernet source is always the interface's own MAC,
//! so a learning switch never learns a farm's virtual MAC (which must stay
//! unknown to it for frames to it to be flooded to every node).

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use holdfast_config::Mac;
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

use crate::error::{NetworkError, Result};
use crate::netlink::Route;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const BROADCAST: Mac = [0xff; 6];
/// Ethernet minimum frame length without the FCS: shorter ARP frames are
/// padded, as a NIC would, so no receiver discards them as runts.
const MIN_FRAME: usize = 60;

/// How to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// Rounds (each one request and one reply); at least one is sent.
    pub rounds: u32,
    /// Pause between rounds, so a frame lost to a busy switch or a
    /// neighbour's lock time is followed by another one later.
    pub interval: Duration,
    /// Hardware address announced for the VIP: `None` for the interface's
    /// own (mirror module), a farm's virtual MAC otherwise.
    pub hardware_address: Option<Mac>,
}

impl Default for Announcement {
    fn default() -> Self {
        Announcement {
            rounds: 3,
            interval: Duration::from_millis(100),
            hardware_address: None,
        }
    }
}

/// Announces that `addr` is now at `interface` (or at
/// `how.hardware_address`): `how.rounds` rounds of gratuitous ARP, the first
/// immediately. Returns once every frame has been handed to the kernel.
pub fn announce(interface: &str, addr: Ipv4Addr, how: &Announcement) -> Result<()> {
    let link =
        Route::open(&format!("announcing {addr} on {interface}"))?.link_by_name(interface)?;
    let mac = link.ethernet_mac.ok_or_else(|| NetworkError::NotEthernet {
        interface: interface.to_string(),
        addr,
    })?;
    let packet_error = |operation, source| NetworkError::Packet {
        interface: interface.to_string(),
        addr,
        operation,
        source,
    };
    let socket = packet_socket(0).map_err(|e| packet_error("opening a packet socket", e))?;
    let sender = how.hardware_address.unwrap_or(mac);
    let frames = [
        gratuitous(mac, sender, addr, ARP_REQUEST),
        gratuitous(mac, sender, addr, ARP_REPLY),
    ];
    for round in 0..how.rounds.max(1) {
        if round > 0 {
            // Pacing between announcements, not a wait for anything.
            std::thread::sleep(how.interval);
        }
        for frame in &frames {
            send_to(&socket, link.index, frame).map_err(|e| packet_error("sending", e))?;
        }
    }
    Ok(())
}

/// A broadcast gratuitous ARP frame from `source` (Ethernet) announcing
/// `addr` at `sender` (ARP sender hardware address).
pub(crate) fn gratuitous(source: Mac, sender: Mac, addr: Ipv4Addr, operation: u16) -> Vec<u8> {
    // A request asks about nobody's MAC (zeros); a reply must name the
    // sender's again for Linux to take it as gratuitous.
    let target = if operation == ARP_REPLY {
        sender
    } else {
        [0; 6]
    };
    arp_frame(BROADCAST, source, operation, (sender, addr), (target, addr))
}

/// An ARP frame to `destination` from `source` (Ethernet), with the ARP
/// sender and target (hardware, protocol) addresses.
fn arp_frame(
    destination: Mac,
    source: Mac,
    operation: u16,
    sender: (Mac, Ipv4Addr),
    target: (Mac, Ipv4Addr),
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MIN_FRAME);
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame.push(6); // hardware address length
    frame.push(4); // protocol address length
    frame.extend_from_slice(&operation.to_be_bytes());
    frame.extend_from_slice(&sender.0);
    frame.extend_from_slice(&sender.1.octets());
    frame.extend_from_slice(&target.0);
    frame.extend_from_slice(&target.1.octets());
    frame.resize(MIN_FRAME, 0);
    frame
}

/// The answer to `frame` if it is an ARP request for `vip`: a reply saying
/// `vip` is at `vmac`, sent to the asker from `own` (the interface's MAC).
pub(crate) fn reply_to(frame: &[u8], own: Mac, vip: Ipv4Addr, vmac: Mac) -> Option<Vec<u8>> {
    // Ethernet header (14) + ARP for Ethernet/IPv4 (28).
    let arp = frame.get(14..42)?;
    let header_ok = frame[12..14] == ETH_P_ARP.to_be_bytes()
        && arp[0..2] == 1u16.to_be_bytes()
        && arp[2..4] == ETH_P_IP.to_be_bytes()
        && arp[4] == 6
        && arp[5] == 4
        && arp[6..8] == ARP_REQUEST.to_be_bytes();
    if !header_ok || arp[24..28] != vip.octets() {
        return None;
    }
    let asker: Mac = arp[8..14].try_into().ok()?;
    let asker_ip = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    Some(arp_frame(
        asker,
        own,
        ARP_REPLY,
        (vmac, vip),
        (asker, asker_ip),
    ))
}

/// A raw packet socket for `protocol` (0: receives nothing, only sends).
fn packet_socket(protocol: u16) -> io::Result<Socket> {
    // socket2 sets close-on-exec on every socket it opens.
    Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(protocol.to_be()))),
    )
}

/// A packet socket receiving the ARP frames of interface `ifindex`, whose
/// reads give up after `poll` (so a reader can look at a stop flag).
pub(crate) fn arp_socket(ifindex: u32, poll: Duration) -> io::Result<Socket> {
    let socket = packet_socket(ETH_P_ARP)?;
    socket.bind(&link_address(ifindex, [0; 6]))?;
    socket.set_read_timeout(Some(poll))?;
    Ok(socket)
}

/// The link-layer address of `destination` on interface `ifindex`: socket2
/// has no safe constructor for `sockaddr_ll`, so it is written into the
/// storage here.
fn link_address(ifindex: u32, destination: Mac) -> SockAddr {
    let mut sll_addr = [0u8; 8];
    sll_addr[..6].copy_from_slice(&destination);
    let address = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as libc::c_ushort,
        sll_protocol: ETH_P_ARP.to_be(),
        sll_ifindex: ifindex as libc::c_int,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr,
    };
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `sockaddr_ll` is one of this platform's `sockaddr_*` types
    // (view_as checks that it fits in the storage), and the length given to
    // SockAddr is that of the `sockaddr_ll` written there, whose family
    // field says AF_PACKET.
    unsafe {
        *storage.view_as::<libc::sockaddr_ll>() = address;
        SockAddr::new(
            storage,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    }
}

/// Sends `frame` on interface `ifindex`, to its Ethernet destination.
pub(crate) fn send_to(socket: &Socket, ifindex: u32, frame: &[u8]) -> io::Result<()> {
    let mut destination = [0u8; 6];
    destination.copy_from_slice(&frame[..6]);
    let sent = socket.send_to(frame, &link_address(ifindex, destination))?;
    if sent != frame.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", frame.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: Mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    const VMAC: Mac = [0x02, 0x48, 0x46, 0x00, 0x00, 0x01];
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);

    #[test]
    fn request_announces_the_vip_at_the_interface_mac() {
        let frame = gratuitous(OWN, OWN, VIP, ARP_REQUEST);
        assert_eq!(frame.len(), MIN_FRAME);
        assert_eq!(&frame[0..6], &BROADCAST);
        assert_eq!(&frame[6..12], &OWN);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&frame[22..28], &OWN);
        assert_eq!(&frame[28..32], &[198, 18, 0, 50]);
        assert_eq!(&frame[32..38], &[0; 6]);
        assert_eq!(&frame[38..42], &[198, 18, 0, 50]);
        assert!(frame[42..].iter().all(|&b| b == 0));
    }

    #[test]
    fn reply_repeats_the_sender_as_target_and_keeps_the_real_source() {
        let frame = gratuitous(OWN, VMAC, VIP, ARP_REPLY);
        // Ethernet source stays the real MAC, so no switch learns the VMAC.
        assert_eq!(&frame[6..12], &OWN);
        assert_eq!(&frame[20..22], &[0, 2]);
        assert_eq!(&frame[22..28], &VMAC);
        assert_eq!(&frame[32..38], &VMAC);
        assert_eq!(&frame[38..42], &[198, 18, 0, 50]);
    }

    #[test]
    fn requests_for_the_vip_get_the_virtual_mac() {
        const ASKER: Mac = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        let asker_ip = Ipv4Addr::new(198, 18, 0, 100);
        let request = arp_frame(
            BROADCAST,
            ASKER,
            ARP_REQUEST,
            (ASKER, asker_ip),
            ([0; 6], VIP),
        );
        let reply = reply_to(&request, OWN, VIP, VMAC).expect("a reply");
        assert_eq!(&reply[0..6], &ASKER, "sent to the asker");
        assert_eq!(&reply[6..12], &OWN, "from the real MAC");
        assert_eq!(&reply[20..22], &[0, 2]);
        assert_eq!(&reply[22..28], &VMAC, "the VIP is at the virtual MAC");
        assert_eq!(&reply[28..32], &[198, 18, 0, 50]);
        assert_eq!(&reply[32..38], &ASKER);
        assert_eq!(&reply[38..42], &[198, 18, 0, 100]);
        // Not for the VIP, a reply, or truncated: no answer.
        let other = arp_frame(
            BROADCAST,
            ASKER,
            ARP_REQUEST,
            (ASKER, asker_ip),
            ([0; 6], Ipv4Addr::new(198, 18, 0, 11)),
        );
        assert_eq!(reply_to(&other, OWN, VIP, VMAC), None);
        assert_eq!(reply_to(&reply, OWN, VIP, VMAC), None);
        assert_eq!(reply_to(&request[..30], OWN, VIP, VMAC), None);
    }
}
