//! The next hop's MAC address, learned from the kernel over rtnetlink when
//! the config does not name it: the gateway of the uplink's IPv4 default
//! route, looked up in the neighbour table, and followed as the table
//! changes. Control plane only; workers read the result once per batch.

use std::{
    io,
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tracing::{info, warn};

/// Why the next hop could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum NextHopError {
    #[error("rtnetlink: {0}")]
    Netlink(#[from] io::Error),
    #[error("no such interface: {0}")]
    NoInterface(String),
    #[error(
        "no IPv4 default route via {0}: the next hop's MAC cannot be learned \
         (add a default route, or set node.next_hop_mac in the config)"
    )]
    NoDefaultRoute(String),
    #[error("the next hop {gateway} on {iface} did not answer ARP within {timeout:?}")]
    Unresolved {
        iface: String,
        gateway: Ipv4Addr,
        timeout: Duration,
    },
}

/// The uplink's next hop: its address and the interface it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub gateway: Ipv4Addr,
}

impl NextHop {
    /// The gateway of `iface`'s IPv4 default route.
    pub fn of(iface: &str) -> Result<Self, NextHopError> {
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .map_err(|_| NextHopError::NoInterface(iface.to_owned()))?;
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        let gateway = dump(RouteNetlinkMessage::GetRoute(request))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .filter(|r| r.header.destination_prefix_length == 0)
            .filter(|r| {
                r.attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == ifindex))
            })
            .find_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                    _ => None,
                })
            })
            .ok_or_else(|| NextHopError::NoDefaultRoute(iface.to_owned()))?;
        Ok(Self { ifindex, gateway })
    }

    /// The gateway's MAC from the neighbour table; if it is not there, a
    /// datagram to the gateway's discard port makes the kernel ask ARP, and
    /// the table is read again, until `timeout`.
    pub fn resolve(&self, iface: &str, timeout: Duration) -> Result<[u8; 6], NextHopError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(mac) = self.lookup()? {
                return Ok(mac);
            }
            if Instant::now() > deadline {
                return Err(NextHopError::Unresolved {
                    iface: iface.to_owned(),
                    gateway: self.gateway,
                    timeout,
                });
            }
            let poke = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                .and_then(|s| s.send_to(&[], (self.gateway, 9)));
            if let Err(e) = poke {
                warn!(gateway = %self.gateway, "cannot make the kernel resolve the next hop: {e}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn lookup(&self) -> io::Result<Option<[u8; 6]>> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Inet;
        Ok(dump(RouteNetlinkMessage::GetNeighbour(request))?
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => self.mac_in(&n),
                _ => None,
            }))
    }

    /// The MAC an entry of the neighbour table gives the gateway, if usable.
    fn mac_in(&self, n: &NeighbourMessage) -> Option<[u8; 6]> {
        let usable = matches!(
            n.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
        let ours = n.attributes.iter().any(|a| {
            matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) if *ip == self.gateway)
        });
        if !(usable && ours && n.header.ifindex == self.ifindex) {
            return None;
        }
        n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLocalAddress(mac) => mac.as_slice().try_into().ok(),
            _ => None,
        })
    }

    /// Follows the neighbour and IPv4 routing tables on a thread of its own
    /// until `stop`: calls `changed` with each new MAC of the next hop, when
    /// the gateway's entry changes or the default route moves to another
    /// gateway (then resolved as at start).
    pub fn follow(
        self,
        iface: String,
        mut current: [u8; 6],
        stop: Arc<AtomicBool>,
        mut changed: impl FnMut([u8; 6]) + Send + 'static,
    ) -> io::Result<JoinHandle<()>> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        let groups = [libc::RTNLGRP_NEIGH, libc::RTNLGRP_IPV4_ROUTE]
            .iter()
            .fold(0, |mask, group| mask | 1 << (group - 1));
        socket.bind(&SocketAddr::new(0, groups))?;
        nix::sys::socket::setsockopt(
            &socket.as_fd(),
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 200_000),
        )
        .map_err(io::Error::from)?;
        let mut hop = self;
        std::thread::Builder::new()
            .name("rialto-nexthop".into())
            .spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(size) = socket.recv(&mut &mut buf[..], 0) else {
                        continue; // the timeout: look at `stop` again
                    };
                    let mut learned = None;
                    let notifications = parse(&buf[..size]).0.into_iter().filter_map(|p| match p {
                        NetlinkPayload::InnerMessage(message) => Some(message),
                        _ => None,
                    });
                    for message in notifications {
                        match message {
                            RouteNetlinkMessage::NewNeighbour(n) => {
                                learned = hop.mac_in(&n).or(learned);
                            }
                            RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
                                match NextHop::of(&iface) {
                                    Ok(new) if new != hop => {
                                        info!(gateway = %new.gateway, "the default route moved");
                                        hop = new;
                                        match hop.resolve(&iface, Duration::from_secs(1)) {
                                            Ok(mac) => learned = Some(mac),
                                            Err(e) => warn!("{e}"),
                                        }
                                    }
                                    Ok(_) => {}
                                    Err(e) => warn!("{e}; frames keep going to the last next hop"),
                                }
                            }
                            _ => {}
                        }
                    }
                    if let Some(mac) = learned
                        && mac != current
                    {
                        current = mac;
                        let shown = rialto_rules::config::Mac(mac);
                        info!(gateway = %hop.gateway, mac = %shown, "next hop's MAC changed");
                        changed(mac);
                    }
                }
            })
    }
}

/// Sends a dump request and collects the answers.
fn dump(request: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut answers = Vec::new();
    let mut receive = vec![0u8; 1 << 16];
    loop {
        let size = socket.recv(&mut &mut receive[..], 0)?;
        let (payloads, broken) = parse(&receive[..size]);
        for payload in payloads {
            match payload {
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("netlink error: {e:?}")));
                }
                NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                _ => {}
            }
        }
        if let Some(e) = broken {
            return Err(e);
        }
    }
}

/// The messages in one netlink datagram, up to the first that does not
/// decode (then also why).
fn parse(mut bytes: &[u8]) -> (Vec<NetlinkPayload<RouteNetlinkMessage>>, Option<io::Error>) {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let message = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
            Ok(message) => message,
            Err(e) => {
                let e = io::Error::new(io::ErrorKind::InvalidData, e.to_string());
                return (out, Some(e));
            }
        };
        let length = message.header.length as usize;
        out.push(message.payload);
        if length == 0 || length >= bytes.len() {
            break;
        }
        bytes = &bytes[length..];
    }
    (out, None)
}
