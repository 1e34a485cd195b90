//! The fleet: this node's flows to its peers, and theirs into its workers'
//! tables, so that any node can carry any connection.
//!
//! Each worker notes the changes of its own flows during a batch (the
//! dataplane's [`Changes`](rialto_dataplane::pipeline::replica::Changes))
//! and puts them in its outbox after it; one thread, the syncer, takes
//! them from every worker, sends them to every peer over UDP in datagrams
//! of the sync protocol (`rialto-sync`: sequence numbers, losses found and
//! repaired, HMAC-SHA256 with the fleet's key), and takes the peers'
//! datagrams in: each flow a peer sends, if the peer may speak for it (it
//! is on one of that peer's SNAT addresses) and its table indices mean
//! the same here (the same flow context), goes to the inbox of the worker
//! whose slice of the SNAT ports holds its port, which adopts it between
//! two batches. The queues are bounded and preallocated: what does not
//! fit is counted, never waited for. Every flow is sent again every
//! [`REFRESH_SECONDS`], so a peer that lost messages, or that joined, has
//! every live flow within that time.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    os::fd::AsFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use crossbeam_queue::ArrayQueue;
use rialto_dataplane::pipeline::{
    replica::{REFRESH_SECONDS, Replica},
    snat::SnatPorts,
};
use rialto_tables::{Fleet, Snapshot};
use serde::Serialize;
use tracing::{info, warn};

use crate::{afxdp::Alarm, worker::SharedTables};

/// A worker's queues to and from the syncer.
const QUEUE: usize = 65536;
/// How long the syncer waits for a datagram before it looks at the
/// workers' outboxes again: what a change waits there at most.
const TICK: Duration = Duration::from_micros(500);
/// How long the syncer waits, per datagram of a peer's, for room in a
/// worker's inbox (the worker adopts its flows meanwhile) before it counts
/// the flows that find none as lost.
const INBOX_PATIENCE: Duration = Duration::from_millis(100);
/// How often each peer hears from this node when it has nothing to say.
const HEARTBEAT: Duration = Duration::from_millis(100);
/// The largest datagram the syncer sends.
const DATAGRAM: usize = 1400;
/// Datagrams kept to answer a peer that lost some.
const RETAIN: usize = 8192;
/// The sync socket's buffers, in bytes.
const SOCKET_RECEIVE: usize = 32 << 20;
const SOCKET_SEND: usize = 8 << 20;
/// How long a starting syncer listens before it takes the peers it has
/// not heard from (they send every [`HEARTBEAT`]) for down.
const LISTEN_FIRST: Duration = Duration::from_millis(500);
/// How long a peer has to answer a PULL before it is asked again.
const PULL_AGAIN: Duration = Duration::from_secs(2);
/// How long the announcement waits for the peers' flows at most.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2 * REFRESH_SECONDS as u64);

/// One worker's end of the syncer's queues.
#[derive(Debug, Clone)]
pub struct WorkerLink {
    /// Changes of the worker's own flows, to the peers.
    pub outbox: Arc<ArrayQueue<Replica>>,
    /// The peers' flows, for the worker to adopt.
    pub inbox: Arc<ArrayQueue<Replica>>,
    /// The last burst (every flow again) the syncer asked for (shared by
    /// all workers), and the last this worker ended.
    pub burst_asked: Arc<AtomicU64>,
    pub burst_done: Arc<AtomicU64>,
    /// Changes the workers could not pass on (a batch's buffer or the
    /// outbox full; shared by all workers).
    pub lost: Arc<AtomicU64>,
    /// How long the peers' new flows took to get here (shared by all
    /// workers).
    pub delays: Arc<Delays>,
}

impl WorkerLink {
    fn new(burst_asked: &Arc<AtomicU64>, lost: &Arc<AtomicU64>, delays: &Arc<Delays>) -> Self {
        Self {
            outbox: Arc::new(ArrayQueue::new(QUEUE)),
            inbox: Arc::new(ArrayQueue::new(QUEUE)),
            burst_asked: Arc::clone(burst_asked),
            burst_done: Arc::default(),
            lost: Arc::clone(lost),
            delays: Arc::clone(delays),
        }
    }
}

/// The replication delay: from a peer's worker handing a change of a flow
/// to its syncer (the time in [`Replica::noted_ns`]) to a worker here
/// adopting the flow, new here, into its table; as a histogram of fixed
/// buckets, each [`Delays::GROWTH`] times the one before, counted with
/// atomics (no lock, no allocation). The two ends read their own clocks
/// (`CLOCK_REALTIME`): between machines, the figure is as good as their
/// clocks agree.
#[derive(Debug)]
pub struct Delays {
    /// Upper bounds in nanoseconds; the last bucket has none.
    bounds: [u64; Delays::BUCKETS - 1],
    counts: [AtomicU64; Delays::BUCKETS],
    sum_ns: AtomicU64,
}

impl Delays {
    const BUCKETS: usize = 64;
    /// The first bucket's upper bound.
    const FIRST_NS: f64 = 10_000.0;
    const GROWTH: f64 = 1.25;

    /// Counts one flow that took `ns` to get here.
    pub fn record(&self, ns: u64) {
        let bucket = self.bounds.partition_point(|&b| b < ns);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// What was counted so far.
    pub fn summary(&self) -> DelaySummary {
        let counts: Vec<u64> = (self.counts.iter())
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let flows = counts.iter().sum();
        let quantile = |q: f64| self.quantile(&counts, flows, q) / 1e6;
        let mut cumulative = 0;
        DelaySummary {
            flows,
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            buckets: (self.bounds.iter().zip(&counts))
                .map(|(&bound, &n)| {
                    cumulative += n;
                    (bound as f64 / 1e9, cumulative)
                })
                .collect(),
        }
    }

    /// The `q` quantile in nanoseconds, interpolated within its bucket as
    /// Prometheus's `histogram_quantile` does; 0 with nothing counted.
    fn quantile(&self, counts: &[u64], total: u64, q: f64) -> f64 {
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &n) in counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let low = if i == 0 { 0 } else { self.bounds[i - 1] };
                let high = self.bounds.get(i).copied().unwrap_or(low);
                let within = (rank - below as f64) / n as f64;
                return low as f64 + (high - low) as f64 * within;
            }
            below += n;
        }
        0.0
    }
}

impl Default for Delays {
    fn default() -> Self {
        Self {
            bounds: std::array::from_fn(|i| {
                (Self::FIRST_NS * Self::GROWTH.powi(i as i32)).round() as u64
            }),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// The replication delay so far.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DelaySummary {
    /// Flows counted.
    pub flows: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub sum_seconds: f64,
    /// Per bucket: its upper bound in seconds and the flows at or below it
    /// (the metrics' histogram).
    #[serde(skip)]
    pub buckets: Vec<(f64, u64)>,
}

/// What the syncer did, per peer, for the API and the metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetStatus {
    pub node: u16,
    pub peers: Vec<PeerStatus>,
    /// Changes the workers could not pass on (their buffer or outbox full).
    pub outbox_full: u64,
    /// Flows for a worker whose inbox was full.
    pub inbox_full: u64,
    pub datagrams_sent: u64,
    pub flows_sent: u64,
    /// Datagrams sent again to a peer that lost them.
    pub resent: u64,
    /// Datagrams from an address that is no peer's.
    pub not_peer: u64,
    /// How long the peers' new flows took to get here.
    pub replication_delay: DelaySummary,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerStatus {
    pub node: u16,
    pub addr: String,
    /// `syncing`, `in_sync` or `lost`.
    pub state: String,
    pub datagrams_received: u64,
    pub flows_received: u64,
    /// Flows taken to a worker.
    pub flows_adopted: u64,
    /// Sequence numbers found missing, and later received.
    pub lost: u64,
    pub repaired: u64,
    /// Datagrams or flows refused, by reason.
    pub rejected: BTreeMap<String, u64>,
}

/// The syncer, running.
#[derive(Debug)]
pub struct Syncer {
    pub status: Arc<Mutex<FleetStatus>>,
    /// Whether this node holds the flows of every peer that is up: until
    /// then it is not announced.
    pub synced: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Whether its thread has ended (it panicked: it stops only when
    /// dropped).
    pub fn stopped(&self) -> bool {
        self.thread.as_ref().is_some_and(JoinHandle::is_finished)
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The queues of `workers` workers.
pub fn links(workers: usize) -> Vec<WorkerLink> {
    let (burst_asked, lost, delays) = (Arc::default(), Arc::default(), Arc::default());
    (0..workers)
        .map(|_| WorkerLink::new(&burst_asked, &lost, &delays))
        .collect()
}

/// Starts the syncer of `fleet` for the workers at the other end of
/// `links`, which `alarm` wakes.
pub fn spawn(
    fleet: &Fleet,
    tables: Arc<SharedTables>,
    links: Vec<WorkerLink>,
    alarm: Alarm,
) -> Result<Syncer> {
    let socket = UdpSocket::bind(fleet.listen)
        .with_context(|| format!("fleet.listen: cannot bind {}", fleet.listen))?;
    socket.set_nonblocking(true)?;
    widen_buffers(&socket);
    let epoch = rand_u64()?;
    let record = size_of::<Replica>();
    let key = rialto_sync::Key::new(&fleet.key).context("fleet.key_file")?;
    let sender = rialto_sync::Sender::new(fleet.node, epoch, key.clone(), record, DATAGRAM, RETAIN)
        .context("the fleet's sync sender")?;
    let receiver = rialto_sync::Receiver::new(
        fleet.node,
        peers_of(fleet),
        key,
        record,
        rialto_sync::Limits::default(),
    )
    .context("the fleet's sync receiver")?;
    let status = Arc::new(Mutex::new(FleetStatus {
        node: fleet.node,
        ..FleetStatus::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let synced = Arc::new(AtomicBool::new(false));
    let burst_asked = Arc::clone(&links[0].burst_asked);
    let mut sync = Sync {
        socket,
        sender,
        receiver,
        tables,
        links,
        alarm,
        status: Arc::clone(&status),
        counted: BTreeMap::new(),
        inbox_full: 0,
        bursts: Vec::new(),
        started: Instant::now(),
        synced: Arc::clone(&synced),
        node: fleet.node,
        burst_asked,
        owner: None,
    };
    let thread = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("rialto-fleet".into())
            .spawn(move || sync.run(&stop))
            .context("cannot start the fleet's syncer")?
    };
    info!(
        node = fleet.node,
        listen = %fleet.listen,
        peers = fleet.peers.len(),
        refresh_seconds = REFRESH_SECONDS,
        "fleet: sharing flows with the peers"
    );
    Ok(Syncer {
        status,
        synced,
        stop,
        thread: Some(thread),
    })
}

/// Gives the sync socket room for a burst (a peer sending every flow it
/// holds comes faster than this thread reads, for a while) beyond the
/// system's default limits, as conntrackd's `RcvSocketBuffer` does: what
/// does not fit is lost and must be repaired. Without the capability
/// (`CAP_NET_ADMIN`), the defaults stay, with a warning.
fn widen_buffers(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let widened = setsockopt(socket, sockopt::RcvBufForce, &SOCKET_RECEIVE)
        .and_then(|()| setsockopt(socket, sockopt::SndBufForce, &SOCKET_SEND));
    if let Err(e) = widened {
        warn!(
            "fleet: the sync socket keeps the system's buffer sizes ({e}): a burst may need repairs"
        );
    }
}

fn peers_of(fleet: &Fleet) -> Vec<rialto_sync::Peer> {
    (fleet.peers.iter())
        .map(|p| rialto_sync::Peer {
            id: p.node,
            addr: p.addr,
        })
        .collect()
}

fn rand_u64() -> Result<u64> {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("/dev/urandom")?;
    Ok(u64::from_ne_bytes(bytes))
}

/// The syncer's own counters per peer, beyond the protocol's.
#[derive(Debug, Default)]
struct Counted {
    flows_adopted: u64,
    rejected: BTreeMap<&'static str, u64>,
    /// Every flow of the peer's came since it was last asked for them all
    /// (its SYNCED after this node's PULL).
    synced: bool,
    /// When this node last asked the peer for all its flows.
    pulled: Option<Instant>,
}

struct Sync {
    socket: UdpSocket,
    sender: rialto_sync::Sender,
    receiver: rialto_sync::Receiver,
    tables: Arc<SharedTables>,
    links: Vec<WorkerLink>,
    alarm: Alarm,
    status: Arc<Mutex<FleetStatus>>,
    counted: BTreeMap<u16, Counted>,
    inbox_full: u64,
    /// The bursts asked for by peers' PULLs, not yet ended: the burst's
    /// number and the node that asked.
    bursts: Vec<(u64, u16)>,
    started: Instant,
    /// Whether this node holds the flows of every peer that is up (or
    /// gave up waiting): it may be announced.
    synced: Arc<AtomicBool>,
    node: u16,
    burst_asked: Arc<AtomicU64>,
    /// The tables' generation and context, and who owns which port under
    /// them.
    owner: Option<(u64, u32, Arc<Snapshot>, SnatPorts)>,
}

impl Sync {
    fn run(&mut self, stop: &AtomicBool) {
        let mut next_heartbeat = Instant::now();
        let mut next_status = Instant::now();
        let mut buf = vec![0u8; 65536];
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            self.refresh_owner();
            // Bursts that ended: their flows are in the outboxes by now.
            let ended: Vec<u16> = self.bursts_ended();
            // Out: every worker's changes, in datagrams, to every peer.
            for link in &self.links {
                while let Some(replica) = link.outbox.pop() {
                    if let Err(e) = self.sender.push(bytemuck::bytes_of(&replica)) {
                        warn!("fleet: a change not sent: {e}");
                    }
                }
            }
            for node in ended {
                self.send_control(Replica::SYNCED, node);
            }
            out.clear();
            self.sender.flush(&mut out);
            let now = Instant::now();
            if now >= next_heartbeat {
                next_heartbeat = now + HEARTBEAT;
                out.push(self.sender.heartbeat());
            }
            for datagram in &out {
                for (peer, _) in self.receiver.peers() {
                    let _ = self.socket.send_to(datagram, peer.addr);
                }
            }
            // In: what the peers sent, until the socket has nothing more.
            while let Ok((len, from)) = self.socket.recv_from(&mut buf) {
                if self.receive(&buf[..len], from) {
                    // The workers adopt while more comes in.
                    self.alarm.ring();
                }
            }
            let polled = self.receiver.poll(Instant::now());
            for (to, nack) in &polled.send {
                let _ = self.socket.send_to(nack, to);
            }
            let mut woken = false;
            for delivery in &polled.deliveries {
                woken |= self.deliver(delivery);
            }
            if woken {
                self.alarm.ring();
            }
            let now = Instant::now();
            self.pull(now);
            if now >= next_status {
                next_status = now + Duration::from_millis(250);
                self.publish();
            }
            self.wait();
        }
    }

    /// Until a datagram comes or [`TICK`] passes (`ppoll`: a high-resolution
    /// timer, where a socket's receive timeout counts in the kernel's ticks
    /// of up to 10 ms).
    fn wait(&self) {
        use nix::poll::{PollFd, PollFlags, ppoll};
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        let _ = ppoll(&mut fds, Some(TICK.into()), None);
    }

    /// Puts a message about the exchange itself in the stream.
    fn send_control(&mut self, kind: u32, node: u16) {
        let record = Replica::control(kind, node);
        if let Err(e) = self.sender.push(bytemuck::bytes_of(&record)) {
            warn!("fleet: a control record not sent: {e}");
        }
    }

    /// The peers whose burst of flows ended (every worker's did).
    fn bursts_ended(&mut self) -> Vec<u16> {
        let done = (self.links.iter())
            .map(|l| l.burst_done.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX);
        let mut ended = Vec::new();
        self.bursts.retain(|&(burst, node)| {
            let over = burst <= done;
            if over {
                ended.push(node);
            }
            !over
        });
        ended
    }

    /// Asks each peer that is up and whose flows this node may not all
    /// have for them all (again after [`PULL_AGAIN`] without an answer);
    /// says whether this node holds every peer's flows.
    fn pull(&mut self, now: Instant) {
        let mut synced = now.duration_since(self.started) >= LISTEN_FIRST;
        let mut asked = Vec::new();
        for (peer, stats) in self.receiver.peers() {
            let up = is_up(&stats);
            let counted = self.counted.entry(peer.id).or_default();
            if !up || counted.synced {
                continue;
            }
            synced = false;
            if counted
                .pulled
                .is_none_or(|at| now.duration_since(at) >= PULL_AGAIN)
            {
                counted.pulled = Some(now);
                asked.push(peer.id);
            }
        }
        for node in asked {
            self.send_control(Replica::PULL, node);
        }
        let gave_up = now.duration_since(self.started) >= SYNC_TIMEOUT;
        if (synced || gave_up) && !self.synced.swap(true, Ordering::AcqRel) {
            match synced {
                true => info!(
                    millis = now.duration_since(self.started).as_millis() as u64,
                    "fleet: synced, the flows of every peer that is up are here"
                ),
                false => warn!("fleet: not every peer sent its flows within {SYNC_TIMEOUT:?}"),
            }
        }
    }

    /// The tables in force, and the SNAT port owners under them.
    fn refresh_owner(&mut self) {
        let generation = self.tables.generation();
        if self.owner.as_ref().is_some_and(|o| o.0 == generation) {
            return;
        }
        let published = self.tables.published();
        let workers = self.links.len() as u32;
        let owner = SnatPorts::new(&published.tables.snat, 0, workers);
        self.owner = Some((
            published.generation,
            published.names.context,
            Arc::clone(&published.tables),
            owner,
        ));
    }

    /// One datagram from `from`: a repair asked for answered, or a peer's
    /// flows to the workers' inboxes. Whether a worker has flows to adopt.
    fn receive(&mut self, bytes: &[u8], from: SocketAddr) -> bool {
        if rialto_sync::wire::peek_kind(bytes) == Some(rialto_sync::wire::Kind::Nack) {
            // A peer lost some of this node's datagrams.
            let Some((peer, _)) = self.receiver.peers().find(|(p, _)| p.addr == from) else {
                return false;
            };
            if let Ok(resend) = self.sender.handle(peer.id, bytes) {
                for datagram in resend {
                    let _ = self.socket.send_to(&datagram, from);
                }
            }
            return false;
        }
        let Ok(delivery) = self.receiver.handle(from, bytes, Instant::now()) else {
            return false;
        };
        if let Some(nack) = &delivery.reply {
            let _ = self.socket.send_to(nack, from);
        }
        self.deliver(&delivery)
    }

    /// A peer's flows, each to the inbox of the worker that owns its port,
    /// if the peer may speak for it. Whether any went.
    fn deliver(&mut self, delivery: &rialto_sync::Delivery) -> bool {
        let Some((_, context, tables, owner)) = &self.owner else {
            return false;
        };
        let peer = tables.fleet_peers().find(|p| p.node == delivery.peer);
        let counted = self.counted.entry(delivery.peer).or_default();
        if delivery.need_resync || delivery.restarted {
            // Flows lost for good (or never heard): all of them again.
            counted.synced = false;
            counted.pulled = None;
        }
        let me = u32::from(self.node);
        let mut any = false;
        let mut patience = INBOX_PATIENCE;
        for record in delivery.records() {
            let replica: Replica = bytemuck::pod_read_unaligned(record);
            let for_me = replica.node == me || replica.node == 0;
            match replica.kind {
                Replica::PULL if for_me => {
                    let burst = self.burst_asked.fetch_add(1, Ordering::AcqRel) + 1;
                    self.bursts.push((burst, delivery.peer));
                    any = true;
                    continue;
                }
                Replica::SYNCED if for_me && counted.pulled.is_some() => {
                    if !counted.synced {
                        let took = counted.pulled.map(|at| at.elapsed()).unwrap_or_default();
                        info!(
                            peer = delivery.peer,
                            millis = took.as_millis() as u64,
                            "fleet: every flow of the peer is here"
                        );
                    }
                    counted.synced = true;
                    self.receiver.resynced(delivery.peer);
                    continue;
                }
                Replica::PULL | Replica::SYNCED => continue,
                _ => {}
            }
            let flow = &replica.flow;
            let addr = rialto_dataplane::pipeline::packet::to_ip(&flow.reverse.dst);
            // A peer speaks for the flows on its own SNAT addresses, and
            // passes on those of a node that is not up.
            let theirs = peer.is_some_and(|p| p.snat.contains(&addr))
                || tables.fleet_peers().any(|p| {
                    p.node != delivery.peer
                        && p.snat.contains(&addr)
                        && !self.receiver.peer(p.node).is_some_and(|s| is_up(&s))
                });
            let reason = if !theirs {
                Some("not_theirs")
            } else if replica.context != *context {
                Some("other_context")
            } else if !valid(&replica, tables) {
                Some("malformed_flow")
            } else {
                None
            };
            if let Some(reason) = reason {
                *counted.rejected.entry(reason).or_default() += 1;
                continue;
            }
            let worker = owner.owner(flow.reverse.dst_port) as usize;
            let inbox = &self.links[worker.min(self.links.len() - 1)].inbox;
            match hand_over(inbox, replica, &self.alarm, &mut patience) {
                true => {
                    counted.flows_adopted += 1;
                    any = true;
                }
                false => self.inbox_full += 1,
            }
        }
        any
    }

    fn publish(&self) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let sent = self.sender.stats();
        status.datagrams_sent = sent.datagrams_sent;
        status.flows_sent = sent.records_sent;
        status.resent = sent.datagrams_resent;
        status.inbox_full = self.inbox_full;
        status.not_peer = self.receiver.not_peer();
        status.outbox_full = self.links[0].lost.load(Ordering::Relaxed);
        status.replication_delay = self.links[0].delays.summary();
        status.peers = (self.receiver.peers())
            .map(|(peer, s)| {
                let counted = self.counted.get(&peer.id);
                let mut rejected: BTreeMap<String, u64> = (s.rejected.iter())
                    .filter(|(_, n)| *n > 0)
                    .map(|(reason, n)| (reason.reason().to_owned(), n))
                    .collect();
                for (reason, n) in counted.iter().flat_map(|c| &c.rejected) {
                    *rejected.entry((*reason).to_owned()).or_default() += n;
                }
                let synced = counted.is_some_and(|c| c.synced);
                let state = match s.state {
                    rialto_sync::PeerState::Lost => "lost",
                    _ if s.epoch.is_none() => "never heard",
                    rialto_sync::PeerState::InSync if synced => "in_sync",
                    _ => "syncing",
                };
                PeerStatus {
                    node: peer.id,
                    addr: peer.addr.to_string(),
                    state: state.to_owned(),
                    datagrams_received: s.datagrams,
                    flows_received: s.records,
                    flows_adopted: counted.map_or(0, |c| c.flows_adopted),
                    lost: s.lost,
                    repaired: s.repaired,
                    rejected,
                }
            })
            .collect();
    }
}

/// Puts a peer's flow in a worker's inbox; while the inbox is full (a
/// burst of flows comes faster than the worker adopts them), wakes the
/// worker and waits, at most `patience` in all, meanwhile the socket's
/// buffer holds what comes next. Whether the flow went in.
fn hand_over(
    inbox: &ArrayQueue<Replica>,
    mut replica: Replica,
    alarm: &Alarm,
    patience: &mut Duration,
) -> bool {
    const NAP: Duration = Duration::from_micros(50);
    loop {
        match inbox.push(replica) {
            Ok(()) => return true,
            Err(back) if !patience.is_zero() => replica = back,
            Err(_) => return false,
        }
        alarm.ring();
        std::thread::sleep(NAP);
        *patience = patience.saturating_sub(NAP);
    }
}

/// Whether a peer was heard from, and lately.
fn is_up(stats: &rialto_sync::PeerStats) -> bool {
    stats.epoch.is_some() && stats.state != rialto_sync::PeerState::Lost
}

/// Whether a peer's flow indexes what these tables have (the same
/// context promises it; a peer that lies is not trusted with an index).
fn valid(replica: &Replica, tables: &Snapshot) -> bool {
    let flow = &replica.flow;
    let side_ok = |side: rialto_dataplane::pipeline::conntrack::Side| match side.tunnel_of() {
        None => true,
        Some((cluster, gateway)) => tables
            .clusters
            .get(usize::from(cluster))
            .is_some_and(|c| usize::from(gateway) < c.gateways.len()),
    };
    (replica.kind == Replica::UP || replica.kind == Replica::DOWN)
        && flow.state.is_valid()
        && flow.forward.pad == [0; 3]
        && flow.reverse.pad == [0; 3]
        && flow.backend.tunnel_of().is_some()
        && side_ok(flow.client)
        && side_ok(flow.backend)
        && tables
            .services
            .get(flow.service as usize)
            .is_some_and(|s| (flow.backend_index as usize) < s.backends.len())
}

#[cfg(test)]
mod tests {
    use super::Delays;

    #[test]
    fn the_replication_delays_quantiles_fall_in_the_right_buckets() {
        let delays = Delays::default();
        assert_eq!(delays.summary().p50_ms, 0.0, "nothing counted");
        // 98 flows at 1 ms, 2 at 50 ms.
        for _ in 0..98 {
            delays.record(1_000_000);
        }
        delays.record(50_000_000);
        delays.record(50_000_000);
        let s = delays.summary();
        assert_eq!(s.flows, 100);
        // Within one bucket (a factor of 1.25) of the truth.
        assert!((0.8..=1.25).contains(&s.p50_ms), "p50 {}", s.p50_ms);
        assert!((40.0..=62.5).contains(&s.p99_ms), "p99 {}", s.p99_ms);
        assert!((s.sum_seconds - 0.198).abs() < 1e-9);
        assert_eq!(s.buckets.last().map(|b| b.1), Some(100));
        // Beyond the last bound: counted, in the open bucket.
        delays.record(u64::MAX / 2);
        assert_eq!(delays.summary().flows, 101);
    }
}
