//! Ping checker: one ICMP echo request per probe over a raw IPv4 socket
//! (root has CAP_NET_RAW; the unprivileged "ping" datagram socket would need
//! `net.ipv4.ping_group_range` opened, which is closed by default, also for
//! root). Replies are told apart by identifier, sequence number and source,
//! since a raw socket receives every ICMP packet reaching the host.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::{timeout_at, Instant};

use super::Probe;
use crate::verdict::Verdict;

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
/// Recognisable payload (after the sequence-dependent header).
const PAYLOAD: &[u8; 16] = b"holdfast checker";

/// Distinguishes the probes of this process from each other (and, mixed
/// with the pid, from other processes' pings).
static NEXT_IDENT: AtomicU16 = AtomicU16::new(0);

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request (header and payload; the kernel adds the IP header).
pub fn echo_request(ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![ECHO_REQUEST, 0, 0, 0];
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(payload);
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// An echo reply as read from a raw IPv4 socket (IP header included):
/// (source, identifier, sequence), or `None` for any other packet.
pub fn parse_echo_reply(packet: &[u8]) -> Option<(Ipv4Addr, u16, u16)> {
    let first = *packet.first()?;
    if first >> 4 != 4 || packet.get(9) != Some(&IPPROTO_ICMP) {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    let source = Ipv4Addr::new(
        *packet.get(12)?,
        *packet.get(13)?,
        *packet.get(14)?,
        *packet.get(15)?,
    );
    let icmp = packet.get(header_len..)?;
    if icmp.len() < 8 || icmp[0] != ECHO_REPLY || icmp[1] != 0 || checksum(icmp) != 0 {
        return None;
    }
    let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    Some((source, ident, seq))
}

/// Probe of a ping checker; owns its raw socket, opened in the network
/// namespace of the thread that built it.
#[derive(Debug)]
pub struct PingProbe {
    address: Ipv4Addr,
    socket: AsyncFd<Socket>,
    ident: u16,
    seq: u16,
    timeout: Duration,
}

impl PingProbe {
    /// Opens the socket: needs CAP_NET_RAW and a tokio runtime.
    pub fn new(address: Ipv4Addr, timeout: Duration) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        socket.set_nonblocking(true)?;
        let ident = (std::process::id() as u16) ^ NEXT_IDENT.fetch_add(0x9e37, Ordering::Relaxed);
        // SAFETY: `socket` owns its descriptor, which stays open and the
        // same until the `AsyncFd` drops it with the socket; nothing else
        // closes or replaces it.
        let socket = unsafe { AsyncFd::register(socket) }?;
        Ok(Self {
            address,
            socket,
            ident,
            seq: 0,
            timeout,
        })
    }

    async fn exchange(&self, seq: u16) -> Result<(), String> {
        let request = echo_request(self.ident, seq, PAYLOAD);
        let to = SockAddr::from(SocketAddrV4::new(self.address, 0));
        self.socket
            .async_io(Interest::WRITABLE, |s| s.send_to(&request, &to))
            .await
            .map_err(|e| format!("sending the echo request: {e}"))?;
        let mut buf = [0u8; 1500];
        loop {
            let n = self
                .socket
                .async_io(Interest::READABLE, |mut s| s.read(&mut buf))
                .await
                .map_err(|e| format!("receiving: {e}"))?;
            if parse_echo_reply(&buf[..n]) == Some((self.address, self.ident, seq)) {
                return Ok(());
            }
        }
    }
}

impl Probe for PingProbe {
    async fn probe(&mut self) -> Verdict {
        self.seq = self.seq.wrapping_add(1);
        let deadline = Instant::now() + self.timeout;
        match timeout_at(deadline, self.exchange(self.seq)).await {
            Ok(Ok(())) => Verdict::Up,
            Ok(Err(why)) => Verdict::Down(format!("ping {}: {why}", self.address)),
            Err(_) => Verdict::Down(format!(
                "ping {}: no reply within {:?}",
                self.address, self.timeout
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071() {
        // 0x0800 + 0x0001 + 0x0001 = 0x0802, complemented.
        assert_eq!(checksum(&[8, 0, 0, 0, 0, 1, 0, 1]), 0xf7fd);
        // Odd length: the last byte is padded with zero.
        assert_eq!(checksum(&[0xff]), !0xff00);
        let request = echo_request(0x1234, 7, PAYLOAD);
        assert_eq!(
            checksum(&request),
            0,
            "a packet with its checksum sums to 0"
        );
    }

    /// An echo reply as the kernel would deliver it: IP header + ICMP.
    fn reply(source: [u8; 4], ident: u16, seq: u16) -> Vec<u8> {
        let mut icmp = echo_request(ident, seq, PAYLOAD);
        icmp[0] = ECHO_REPLY;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, IPPROTO_ICMP, 0, 0];
        ip.extend_from_slice(&source);
        ip.extend_from_slice(&[198, 18, 0, 11]);
        ip.extend_from_slice(&icmp);
        ip
    }

    #[test]
    fn replies_are_recognised_and_others_ignored() {
        let good = reply([198, 18, 0, 12], 42, 3);
        assert_eq!(
            parse_echo_reply(&good),
            Some((Ipv4Addr::new(198, 18, 0, 12), 42, 3))
        );
        let mut request = good.clone();
        request[20] = ECHO_REQUEST;
        assert_eq!(parse_echo_reply(&request), None, "not a reply");
        let mut corrupt = good.clone();
        corrupt[30] ^= 1;
        assert_eq!(parse_echo_reply(&corrupt), None, "bad checksum");
        assert_eq!(parse_echo_reply(&good[..24]), None, "truncated");
    }
}
