//! A small synchronous rtnetlink client: one request, its answers, bounded
//! in time. Messages are built and parsed with `netlink-packet-route` (the
//! message layer of the `rtnetlink` crate) over a plain blocking
//! `netlink-sys` socket, so the socket lives in the network namespace of the
//! thread that opens it, and no async runtime is needed (the daemon calls
//! this from a blocking task, tests from a thread inside a lab host).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{NetworkError, Result};

/// Longest wait for one answer datagram; the kernel answers rtnetlink
/// requests within the send call, so this only guards against the unexpected.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time a whole request (all its answer datagrams) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive buffer: larger than the biggest datagram the kernel builds for a
/// dump (32 KiB), so no answer is ever truncated.
const RECEIVE_BUFFER: usize = 64 * 1024;
/// Longest interface name (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// A network interface, as netlink describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    /// Hardware address, when the link is Ethernet.
    pub ethernet_mac: Option<[u8; 6]>,
}

/// One IPv4 address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ipv4Entry {
    pub index: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// Checks a name the way the kernel's `dev_valid_name` does, so a bad name
/// is refused with a clear error before any request.
pub(crate) fn check_interface_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if valid {
        Ok(())
    } else {
        Err(NetworkError::InvalidInterfaceName {
            interface: name.to_string(),
        })
    }
}

/// A kernel answer to a request: the messages, or the error code it refused
/// the request with (kept apart so callers can accept e.g. `EEXIST`).
pub(crate) type Answer = std::result::Result<Vec<RouteNetlinkMessage>, io::Error>;

/// A route netlink socket opened in the calling thread's network namespace.
#[derive(Debug)]
pub(crate) struct Route {
    socket: Socket,
    sequence: u32,
}

impl Route {
    pub fn open(operation: &str) -> Result<Route> {
        let fail = |source| NetworkError::Netlink {
            operation: format!("{operation}: opening a route netlink socket"),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(fail)?;
        socket.bind_auto().map_err(fail)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(fail)?;
        set_receive_timeout(&socket, RECEIVE_TIMEOUT).map_err(fail)?;
        Ok(Route {
            socket,
            sequence: 0,
        })
    }

    /// Sends a request (`flags`: e.g. `NLM_F_CREATE`) asking for an
    /// acknowledgement, and collects the answers up to it.
    pub fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        operation: &str,
    ) -> Result<Answer> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_ACK | flags, operation)
    }

    /// Sends a dump request and collects the answers up to the end of the
    /// dump. Kept apart from [`request`](Self::request) because the flag
    /// bits overlap (`NLM_F_DUMP` shares a bit with `NLM_F_EXCL`).
    pub fn dump(&mut self, message: RouteNetlinkMessage, operation: &str) -> Result<Answer> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_DUMP, operation)
    }

    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        operation: &str,
    ) -> Result<Answer> {
        let fail = |source| NetworkError::Netlink {
            operation: operation.to_string(),
            source,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST
            | flags
            | if flags & NLM_F_DUMP == 0 {
                NLM_F_ACK
            } else {
                0
            };
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(fail)?;

        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut answers = Vec::new();
        let mut buffer = Vec::with_capacity(RECEIVE_BUFFER);
        while Instant::now() < deadline {
            buffer.clear();
            // MSG_TRUNC makes recv return the real datagram size, so a
            // truncated answer is detected instead of misparsed.
            let size = self
                .socket
                .recv(&mut buffer, libc::MSG_TRUNC)
                .map_err(fail)?;
            if size > buffer.len() {
                return Err(NetworkError::Decode {
                    operation: operation.to_string(),
                    detail: format!("datagram of {size} bytes truncated to {}", buffer.len()),
                });
            }
            let mut offset = 0;
            while offset < buffer.len() {
                let rest = &buffer[offset..];
                let length = NetlinkBuffer::new_checked(rest)
                    .map_err(|e| decode(operation, e))?
                    .length() as usize;
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..length])
                    .map_err(|e| decode(operation, e))?;
                // Messages are 4-byte aligned within a datagram.
                offset += length.div_ceil(4) * 4;
                if parsed.header.sequence_number != self.sequence {
                    continue; // an answer to nothing we asked on this socket
                }
                match parsed.payload {
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    NetlinkPayload::Done(_) => return Ok(Ok(answers)),
                    NetlinkPayload::Error(error) => {
                        return Ok(match error.code {
                            None => Ok(answers),
                            Some(_) => Err(error.to_io()),
                        })
                    }
                    _ => {}
                }
            }
        }
        Err(fail(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no complete answer within {REQUEST_TIMEOUT:?}"),
        )))
    }

    /// The interface named `name`.
    pub fn link_by_name(&mut self, name: &str) -> Result<Link> {
        check_interface_name(name)?;
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let operation = format!("looking up interface {name}");
        self.link(message, &operation, name)
    }

    /// The interface of index `index`.
    pub fn link_by_index(&mut self, index: u32) -> Result<Link> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        let operation = format!("looking up interface #{index}");
        self.link(message, &operation, &format!("#{index}"))
    }

    fn link(&mut self, message: LinkMessage, operation: &str, name: &str) -> Result<Link> {
        let answer = self.request(RouteNetlinkMessage::GetLink(message), 0, operation)?;
        let messages = match answer {
            Ok(messages) => messages,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                return Err(NetworkError::NoSuchInterface {
                    interface: name.to_string(),
                })
            }
            Err(source) => {
                return Err(NetworkError::Netlink {
                    operation: operation.to_string(),
                    source,
                })
            }
        };
        messages
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(parse_link(link)),
                _ => None,
            })
            .ok_or_else(|| NetworkError::Decode {
                operation: operation.to_string(),
                detail: "no link in the answer".to_string(),
            })
    }

    /// Every IPv4 address of every interface.
    pub fn ipv4_addresses(&mut self, operation: &str) -> Result<Vec<Ipv4Entry>> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        let answer = self.dump(RouteNetlinkMessage::GetAddress(message), operation)?;
        let messages = answer.map_err(|source| NetworkError::Netlink {
            operation: operation.to_string(),
            source,
        })?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => ipv4_entry(&a),
                _ => None,
            })
            .collect())
    }
}

fn decode(operation: &str, error: impl std::fmt::Display) -> NetworkError {
    NetworkError::Decode {
        operation: operation.to_string(),
        detail: error.to_string(),
    }
}

fn parse_link(link: LinkMessage) -> Link {
    let mut name = String::new();
    let mut mac = None;
    for attribute in link.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = n,
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    let ethernet = link.header.link_layer_type == LinkLayerType::Ether;
    Link {
        index: link.header.index,
        name,
        ethernet_mac: mac.filter(|_| ethernet),
    }
}

/// The IPv4 address of an address message: `IFA_LOCAL` is the interface's
/// own address (`IFA_ADDRESS` is the peer's on point-to-point links).
fn ipv4_entry(message: &AddressMessage) -> Option<Ipv4Entry> {
    if message.header.family != AddressFamily::Inet {
        return None;
    }
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
        _ => None,
    });
    Some(Ipv4Entry {
        index: message.header.index,
        addr: local.or(address)?,
        prefix_len: message.header.prefix_len,
    })
}

/// Bounds every receive on the socket, so no request can hang the caller.
fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    socket2::SockRef::from(socket).set_read_timeout(Some(timeout))
}
