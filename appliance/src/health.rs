//! Health checks of every checked backend, along the data's path.
//!
//! A thread of the control plane runs a TCP/IP stack of its own (smoltcp)
//! on Rialto's SNAT addresses. A check is a TCP connection from a port of
//! `checks.ports` to the backend: accepted is a pass for `tcp`; for `http`
//! a `GET` must then be answered with the expected status. Its packets are
//! encapsulated as a flow's are ([`balance::to_cluster`]) and sent by the
//! workers ([`ControlPath::send`]); the answers come back through the
//! tunnel to the SNAT address, where the workers pass them on
//! ([`Verdict::Punt`](rialto_dataplane::Verdict::Punt)). A check that passes
//! proves the gateway, the tunnel, the pod and its server; a gateway that
//! is down fails every check of its cluster. Nothing of this runs on the
//! workers' per-packet path: they only copy the answers out and the checks
//! in, counted apart (`check_in`, `check_out`).
//!
//! Each backend is checked every `interval_ms`, give or take a tenth (so
//! the checks of many backends spread out), each check given `timeout_ms`.
//! A backend goes down after `fall` failures in a row and comes back after
//! `rise` passes; it is up until checked otherwise (a restart does not take
//! every backend out). Results go on the [`Board`]: per backend, up or
//! down, the last result, its latency, the transitions, each of which is
//! logged once and bumps the board's version; the control plane follows
//! the version and rebuilds the Maglev tables whose choice of backends
//! changed (`Control::apply_health`).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rialto_dataplane::pipeline::balance;
use rialto_tables::{Check, CheckKind, Snapshot};
use serde::Serialize;
use smoltcp::{
    iface::{Config, Interface, SocketHandle, SocketSet},
    phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken},
    socket::tcp,
    wire::{HardwareAddress, IpAddress, IpCidr},
};
use tracing::{info, warn};

use crate::{afxdp::ControlPath, worker::SharedTables};

/// A checked backend: of a service (by name), in a cluster (by name), at
/// an address. What is kept across reloads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub service: String,
    pub cluster: String,
    pub addr: SocketAddr,
}

/// What the checks say of one backend.
#[derive(Clone, Debug, Serialize)]
pub struct BackendHealth {
    /// Whether it takes new flows as far as its checks go.
    pub up: bool,
    /// The last check's result: `ok`, `timeout`, `refused` (reset before
    /// it was accepted), `reset`, `closed` (closed before answering),
    /// `status N` (another status than expected), `unreachable` (no way to
    /// its cluster).
    pub last: &'static str,
    /// The last check's status, for `status N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How long the last check took, in milliseconds.
    pub latency_ms: f64,
    /// Checks made, and how many times it went down or came back.
    pub checks: u64,
    pub transitions: u64,
}

/// The results of every check, shared with the control plane and the API.
#[derive(Debug, Default)]
pub struct Board {
    backends: Mutex<HashMap<Key, BackendHealth>>,
    /// One more at each transition.
    version: AtomicU64,
    /// Set while the answers to checks may not find their way back yet: a
    /// node of a fleet is reached at its VTEP through its own announcement,
    /// so until the router has its route every check fails. Failures then
    /// do not count; the first check that passes (the way back works) ends
    /// the hold.
    pub hold: AtomicBool,
}

impl Board {
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn backends(&self) -> std::sync::MutexGuard<'_, HashMap<Key, BackendHealth>> {
        self.backends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the checks say of a backend, if it was checked.
    pub fn of(&self, key: &Key) -> Option<BackendHealth> {
        self.backends().get(key).cloned()
    }

    /// Per service of `tables`, per backend: whether the checks let it take
    /// new flows (one not checked does).
    pub fn healthy(&self, tables: &Snapshot) -> Vec<Vec<bool>> {
        let backends = self.backends();
        (tables.services.iter())
            .map(|s| {
                (s.backends.iter())
                    .map(|b| {
                        let key = key(tables, &s.name, b);
                        backends.get(&key).is_none_or(|h| h.up)
                    })
                    .collect()
            })
            .collect()
    }
}

/// The key of backend `b` of service `service` in `tables`.
pub fn key(tables: &Snapshot, service: &str, b: &rialto_tables::Backend) -> Key {
    Key {
        service: service.to_owned(),
        cluster: tables.clusters[usize::from(b.cluster)].name.clone(),
        addr: b.addr,
    }
}

/// Starts the checker: it checks what the published tables say, sends
/// through `path`, and stops when `stop` is set. `panics`: a fault the
/// tests inject, the thread panicking as it starts.
pub fn spawn(
    tables: Arc<SharedTables>,
    path: ControlPath,
    iface_mac: [u8; 6],
    stop: Arc<AtomicBool>,
    panics: bool,
) -> std::io::Result<(Arc<Board>, JoinHandle<()>)> {
    let board = Arc::new(Board::default());
    let checker = Checker::new(tables, path, iface_mac, Arc::clone(&board));
    let handle = std::thread::Builder::new()
        .name("rialto-checks".into())
        .spawn(move || {
            assert!(!panics, "fault injected: the health checker panics");
            checker.run(&stop)
        })?;
    Ok((board, handle))
}

/// How long the checker sleeps at most, so that it sees a reload or a stop.
const IDLE: Duration = Duration::from_millis(100);
/// How often it reads the answers while checks are in progress (what a
/// check's latency may be off by, per round trip).
const TICK: Duration = Duration::from_millis(5);
/// Each socket's buffers: a check sends a request line and reads a status
/// line.
const RX_BUFFER: usize = 4096;
const TX_BUFFER: usize = 1024;

/// One backend to check, and its check in progress.
struct Target {
    key: Key,
    check: Check,
    /// The cluster's index in the tables in force, and where to connect.
    cluster: u16,
    to: SocketAddr,
    next: Instant,
    probe: Option<Probe>,
    passes: u32,
    fails: u32,
}

/// A check in progress.
struct Probe {
    socket: SocketHandle,
    port: u16,
    started: Instant,
    deadline: Instant,
    asked: bool,
    answer: Vec<u8>,
}

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Timeout,
    Refused,
    Reset,
    Closed,
    Status(u16),
    Unreachable,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Closed => "closed",
            Self::Status(_) => "status",
            Self::Unreachable => "unreachable",
        }
    }
}

struct Checker {
    tables: Arc<SharedTables>,
    path: ControlPath,
    iface_mac: [u8; 6],
    board: Arc<Board>,
    started: Instant,
    generation: Option<u64>,
    current: Arc<Snapshot>,
    targets: Vec<Target>,
    /// When each target is due (target index), soonest first.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The targets with a check in progress.
    active: Vec<usize>,
    /// Check ports not in use, the longest free first.
    ports: VecDeque<u16>,
    /// Sockets aborted, removed (and their ports freed) once their reset
    /// is out.
    closing: Vec<(SocketHandle, u16)>,
    /// Which target's cluster a check port's packets go to.
    port_cluster: HashMap<u16, (u16, u64)>,
    stack: Interface,
    device: Tunnel,
    sockets: SocketSet<'static>,
    rng: u64,
}

impl Checker {
    fn new(
        tables: Arc<SharedTables>,
        path: ControlPath,
        iface_mac: [u8; 6],
        board: Arc<Board>,
    ) -> Self {
        let current = tables.current();
        let mut device = Tunnel::default();
        let seed = seed();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let stack = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        Self {
            tables,
            path,
            iface_mac,
            board,
            started: Instant::now(),
            generation: None,
            current,
            targets: Vec::new(),
            due: BinaryHeap::new(),
            active: Vec::new(),
            ports: VecDeque::new(),
            closing: Vec::new(),
            port_cluster: HashMap::new(),
            stack,
            device,
            sockets: SocketSet::new(Vec::new()),
            rng: seed | 1,
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.follow_tables();
            let now = Instant::now();
            self.start_due(now);
            while let Some(packet) = self.path.receive() {
                self.device.rx.push_back(packet.data().to_vec());
            }
            self.poll(now);
            self.progress(now);
            self.poll(now);
            self.send();
            let deadlines = (self.active.iter())
                .filter_map(|&i| self.targets[i].probe.as_ref().map(|p| p.deadline));
            let wake = (self.due.peek().map(|Reverse((at, _))| *at).into_iter())
                .chain(deadlines)
                .min()
                .map_or(IDLE, |at| at.saturating_duration_since(Instant::now()));
            let stack = self
                .stack
                .poll_delay(self.smol_now(Instant::now()), &self.sockets)
                .map_or(IDLE, |d| Duration::from_micros(d.total_micros()));
            // While checks are in progress, their answers are read a tick
            // at a time, in batches: the workers only queue them.
            let tick = if self.active.is_empty() { IDLE } else { TICK };
            std::thread::sleep(wake.min(stack).min(tick).max(TICK));
        }
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(now.duration_since(self.started).as_micros() as i64)
    }

    /// After a reload: the targets of the new tables, keeping what was
    /// known of a backend checked the same way; the stack's addresses and
    /// MTU, the check ports.
    fn follow_tables(&mut self) {
        let published = self.tables.published();
        if self.generation == Some(published.generation) {
            return;
        }
        self.generation = Some(published.generation);
        let tables = Arc::clone(&published.tables);
        let mut old: HashMap<Key, Target> = (self.targets.drain(..))
            .map(|t| (t.key.clone(), t))
            .collect();
        let now = Instant::now();
        for s in &tables.services {
            let Some(check) = &s.check else { continue };
            for b in &s.backends {
                let key = key(&tables, &s.name, b);
                let to = SocketAddr::new(b.addr.ip(), check.port.unwrap_or(b.addr.port()));
                let target = match old.remove(&key) {
                    Some(t) if t.check == *check && t.to == to => Target {
                        cluster: b.cluster,
                        ..t
                    },
                    other => {
                        if let Some(t) = other {
                            self.drop_probe(t);
                        }
                        let first = self.jitter(check.interval_ms, 1.0);
                        Target {
                            key,
                            check: check.clone(),
                            cluster: b.cluster,
                            to,
                            next: now + first,
                            probe: None,
                            passes: 0,
                            fails: 0,
                        }
                    }
                };
                self.targets.push(target);
            }
        }
        let board = Arc::clone(&self.board);
        for (key, target) in old {
            board.backends().remove(&key);
            self.drop_probe(target);
        }
        let mtu = usize::from(tables.node.mtu).saturating_sub(rialto_tables::vxlan_overhead(true));
        self.device.mtu = mtu.min(crate::afxdp::PACKET_MAX - 128);
        let v4 = tables
            .snat
            .v4
            .first()
            .map(|&a| IpCidr::new(IpAddress::Ipv4(a), 0));
        let v6 = tables
            .snat
            .v6
            .first()
            .map(|&a| IpCidr::new(IpAddress::Ipv6(a), 0));
        self.stack.update_ip_addrs(|addrs| {
            addrs.clear();
            for cidr in v4.into_iter().chain(v6) {
                let _ = addrs.push(cidr);
            }
        });
        // The free ports stay in the order they were freed, unless the range
        // changed: a port used again soon after could meet the state its
        // last connection left at the backend.
        if tables.check_ports != self.current.check_ports || self.ports.is_empty() {
            let in_use: Vec<u16> = (self.targets.iter())
                .filter_map(|t| t.probe.as_ref().map(|p| p.port))
                .chain(self.closing.iter().map(|c| c.1))
                .collect();
            self.ports = tables.check_ports.map_or(VecDeque::new(), |(first, last)| {
                (first..=last).filter(|p| !in_use.contains(p)).collect()
            });
        }
        self.current = tables;
        self.due = (self.targets.iter().enumerate())
            .filter(|(_, t)| t.probe.is_none())
            .map(|(i, t)| Reverse((t.next, i)))
            .collect();
        self.active = (self.targets.iter().enumerate())
            .filter(|(_, t)| t.probe.is_some())
            .map(|(i, _)| i)
            .collect();
    }

    /// Starts the checks that are due, each on a port of its own.
    fn start_due(&mut self, now: Instant) {
        while let Some(&Reverse((at, i))) = self.due.peek() {
            if at > now || self.ports.is_empty() {
                break;
            }
            self.due.pop();
            let target = &self.targets[i];
            let port = self.ports.pop_front().expect("checked above");
            let local = match target.to.ip() {
                IpAddr::V4(_) => self.current.snat.v4.first().map(|&a| IpAddr::V4(a)),
                IpAddr::V6(_) => self.current.snat.v6.first().map(|&a| IpAddr::V6(a)),
            };
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
                tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
            );
            let timeout = Duration::from_millis(u64::from(target.check.timeout_ms));
            let connected = local.is_some_and(|local| {
                socket
                    .connect(
                        self.stack.context(),
                        target.to,
                        SocketAddr::new(local, port),
                    )
                    .is_ok()
            });
            if !connected {
                self.ports.push_back(port);
                self.finish(i, Outcome::Unreachable, Duration::ZERO);
                continue;
            }
            let hash = u64::from(port) << 16 | u64::from(target.cluster);
            self.port_cluster.insert(port, (target.cluster, hash));
            let handle = self.sockets.add(socket);
            self.targets[i].probe = Some(Probe {
                socket: handle,
                port,
                started: now,
                deadline: now + timeout,
                asked: false,
                answer: Vec::new(),
            });
            self.active.push(i);
        }
    }

    fn poll(&mut self, now: Instant) {
        let at = self.smol_now(now);
        self.stack.poll(at, &mut self.device, &mut self.sockets);
        // Aborted sockets whose reset went out.
        let sockets = &mut self.sockets;
        let (ports, port_cluster) = (&mut self.ports, &mut self.port_cluster);
        let range = self.current.check_ports;
        self.closing.retain(|&(handle, port)| {
            let closed = sockets.get::<tcp::Socket>(handle).state() == tcp::State::Closed;
            if closed {
                sockets.remove(handle);
                port_cluster.remove(&port);
                if range.is_some_and(|(first, last)| (first..=last).contains(&port)) {
                    ports.push_back(port);
                }
            }
            !closed
        });
    }

    /// Moves each check in progress along: asks its question, reads its
    /// answer, or ends it.
    fn progress(&mut self, now: Instant) {
        let mut k = 0;
        while k < self.active.len() {
            let i = self.active[k];
            let target = &mut self.targets[i];
            let Some(probe) = &mut target.probe else {
                continue;
            };
            let socket = self.sockets.get_mut::<tcp::Socket>(probe.socket);
            let outcome = match (&target.check.kind, socket.state()) {
                (_, tcp::State::SynSent) => None,
                (_, tcp::State::Closed) if probe.asked || !probe.answer.is_empty() => {
                    Some(Outcome::Reset)
                }
                (_, tcp::State::Closed) => Some(Outcome::Refused),
                (CheckKind::Tcp, tcp::State::Established) => Some(Outcome::Ok),
                (CheckKind::Tcp, _) => None,
                (CheckKind::Http { path, status }, _) => {
                    if !probe.asked && socket.may_send() {
                        let request = format!(
                            "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: rialto-check\r\n\
                             Connection: close\r\n\r\n",
                            target.to
                        );
                        probe.asked = socket.send_slice(request.as_bytes()).is_ok();
                    }
                    let mut buf = [0u8; 512];
                    while let Ok(n @ 1..) = socket.recv_slice(&mut buf) {
                        probe.answer.extend_from_slice(&buf[..n]);
                    }
                    match status_line(&probe.answer) {
                        Some(got) if got == *status => Some(Outcome::Ok),
                        Some(got) => Some(Outcome::Status(got)),
                        None if probe.asked && !socket.may_recv() => Some(Outcome::Closed),
                        None => None,
                    }
                }
            };
            let outcome = outcome.or((now >= probe.deadline).then_some(Outcome::Timeout));
            if let Some(outcome) = outcome {
                let took = now.duration_since(probe.started);
                socket.abort();
                self.closing.push((probe.socket, probe.port));
                target.probe = None;
                self.active.swap_remove(k);
                self.finish(i, outcome, took);
            } else {
                k += 1;
            }
        }
    }

    /// Notes a check's outcome: the streaks, a transition (logged once),
    /// the board; schedules the next check.
    fn finish(&mut self, i: usize, outcome: Outcome, took: Duration) {
        let next = self.jitter(self.targets[i].check.interval_ms, 0.2);
        let target = &mut self.targets[i];
        target.next = Instant::now() + next;
        self.due.push(Reverse((target.next, i)));
        if outcome == Outcome::Ok {
            target.passes += 1;
            target.fails = 0;
            self.board.hold.store(false, Ordering::Relaxed);
        } else if !self.board.hold.load(Ordering::Relaxed) {
            target.fails += 1;
            target.passes = 0;
        }
        let mut board = self.board.backends();
        let health = board.entry(target.key.clone()).or_insert(BackendHealth {
            up: true,
            last: "",
            status: None,
            latency_ms: 0.0,
            checks: 0,
            transitions: 0,
        });
        health.last = outcome.name();
        health.status = match outcome {
            Outcome::Status(s) => Some(s),
            _ => None,
        };
        health.latency_ms = took.as_secs_f64() * 1000.0;
        health.checks += 1;
        let turned = match health.up {
            true => target.fails >= u32::from(target.check.fall),
            false => target.passes >= u32::from(target.check.rise),
        };
        if turned {
            health.up = !health.up;
            health.transitions += 1;
            let Key {
                service,
                cluster,
                addr,
            } = &target.key;
            match health.up {
                true => info!(
                    service,
                    cluster,
                    %addr,
                    passes = target.passes,
                    "backend up: it takes new flows again"
                ),
                false => warn!(
                    service,
                    cluster,
                    %addr,
                    fails = target.fails,
                    last = outcome.name(),
                    "backend down: it takes no new flow"
                ),
            }
            self.board.version.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Sends what the stack wrote: each packet in VXLAN to its check's
    /// cluster, through the workers.
    fn send(&mut self) {
        let next_hop = (self.current.node.next_hop_mac)
            .or_else(|| self.tables.next_hop())
            .unwrap_or([0xff; 6]);
        let mut sent = false;
        for packet in self.device.tx.drain(..) {
            let Some(&(cluster, hash)) =
                source_port(&packet).and_then(|p| self.port_cluster.get(&p))
            else {
                continue;
            };
            if let Some(frame) = balance::to_cluster(
                &self.current,
                self.iface_mac,
                next_hop,
                cluster,
                hash,
                &packet,
            ) {
                sent |= self.path.send(frame.data());
            }
        }
        if sent {
            self.path.kick();
        }
    }

    /// A check in progress whose target is gone, or changed: ended.
    fn drop_probe(&mut self, target: Target) {
        if let Some(probe) = target.probe {
            self.sockets.get_mut::<tcp::Socket>(probe.socket).abort();
            self.closing.push((probe.socket, probe.port));
        }
    }

    /// `interval_ms`, give or take `spread / 2` of it; with a spread of 1,
    /// anywhere from 0 to `interval_ms` (a first check).
    fn jitter(&mut self, interval_ms: u32, spread: f64) -> Duration {
        // xorshift64: spreading checks needs no better randomness.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        let factor = if spread >= 1.0 {
            unit
        } else {
            1.0 - spread / 2.0 + unit * spread
        };
        Duration::from_secs_f64(f64::from(interval_ms) / 1000.0 * factor)
    }
}

/// The status of an HTTP response, once its status line is whole.
fn status_line(answer: &[u8]) -> Option<u16> {
    let end = answer.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&answer[..end]).ok()?;
    let mut words = line.split_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/"))?;
    // A status that is no number fails the check as status 0.
    Some(words.next().and_then(|s| s.parse().ok()).unwrap_or(0))
}

/// The TCP source port of an IP packet the stack wrote.
fn source_port(packet: &[u8]) -> Option<u16> {
    let l4 = match packet.first()? >> 4 {
        4 => usize::from(packet.first()? & 0x0f) * 4,
        6 => 40,
        _ => return None,
    };
    Some(u16::from_be_bytes([*packet.get(l4)?, *packet.get(l4 + 1)?]))
}

/// A seed for the stack's initial sequence numbers and the checks' jitter.
fn seed() -> u64 {
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    time ^ u64::from(std::process::id()).rotate_left(32)
}

/// The stack's device: IP packets in from the workers, out to be wrapped
/// in VXLAN.
#[derive(Default)]
struct Tunnel {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    mtu: usize,
}

impl Device for Tunnel {
    type RxToken<'a> = Received;
    type TxToken<'a> = Outgoing<'a>;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((Received(packet), Outgoing(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(Outgoing(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu.max(1280);
        caps
    }
}

struct Received(Vec<u8>);

impl RxToken for Received {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct Outgoing<'a>(&'a mut Vec<Vec<u8>>);

impl TxToken for Outgoing<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let result = f(&mut packet);
        self.0.push(packet);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_status_line_once_whole() {
        assert_eq!(status_line(b"HTTP/1.0 200 OK\r\nServer: x\r\n"), Some(200));
        assert_eq!(
            status_line(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_line(b"HTTP/1.0 200 O"), None);
        assert_eq!(status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_line(b"HTTP/1.0 xyz\r\n"), Some(0));
    }

    #[test]
    fn finds_the_source_port_of_either_family() {
        let mut v4 = vec![0x45u8; 20];
        v4.extend_from_slice(&61000u16.to_be_bytes());
        assert_eq!(source_port(&v4), Some(61000));
        let mut v6 = vec![0x60u8; 40];
        v6.extend_from_slice(&61001u16.to_be_bytes());
        assert_eq!(source_port(&v6), Some(61001));
        assert_eq!(source_port(&[0x45; 10]), None);
    }
}
