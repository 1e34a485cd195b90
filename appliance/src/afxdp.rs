//! AF_XDP sockets and their UMEM: the only place Rialto touches the rings.
//!
//! The ports of one interface share one UMEM ([`XskPort::open_shared`]), and
//! each port owns a contiguous share of its frames. Every frame a port owns
//! is in exactly one place at any moment, and the port keeps the count
//! ([`Ledger`]):
//! - `free`: ours, idle, in `XskPort::free`;
//! - `kernel_rx`: posted on the fill ring, or received and waiting in the RX ring;
//! - `kernel_tx`: posted on the TX ring, not yet back through the completion ring;
//! - `lent`: handed to another port, not yet back home.
//!
//! Frames being processed are in none of these only inside [`XskPort::step`].
//!
//! **A step** ([`XskPort::step`]): the frames off the RX ring and those
//! other ports handed over are mapped in place as one batch of
//! [`FrameBuf`]s, handed to the caller's pipeline, which returns a
//! [`Verdict`] for each; then each goes where its verdict says (the TX
//! ring, the free pool, another port's inbox), and the rings are kicked,
//! recycled and refilled. The port never looks inside a frame.
//!
//! **Handoff.** A reply can arrive on another queue than its request (RSS
//! hashes the tunnel's outer header), so at a worker that does not own its
//! flow. The pipeline names the owner ([`Verdict::Handoff`], read from the
//! SNAT port) and the frame itself goes to the owner's inbox: no copy, as
//! VPP's NAT hands buffers between workers. The owner processes it like its
//! own, transmits it on its own TX ring, and sends it home to the port that
//! owns the frame once the kernel has completed it (or at once if dropped).

use std::{
    ffi::CString,
    num::NonZeroU32,
    os::fd::{AsFd, AsRawFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering, fence},
    },
    time::{Duration, Instant},
};

use arrayvec::ArrayVec;
use crossbeam_queue::ArrayQueue;
use nix::sys::eventfd::{EfdFlags, EventFd};
use rialto_dataplane::{FrameBuf, Verdict};
use serde::Serialize;
use tracing::{debug, warn};
use xsk_rs::{
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
};

use crate::tally::{IoDrop, Tally};

/// `SOL_XDP` socket option (Linux >= 6.17): how many descriptors one `sendto`
/// may transmit in copy mode (default 32).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// Sizes of one port's UMEM and rings.
#[derive(Clone, Copy, Debug)]
pub struct PortConfig {
    /// UMEM frames per port; at least twice `ring_size`, so the fill ring can
    /// be kept full while as many frames again are in flight.
    pub frames: u32,
    /// Bytes per frame (a power of two, 2048 or 4096).
    pub frame_size: u32,
    /// Slots in each of the four rings (a power of two).
    pub ring_size: u32,
    /// Frames taken from the RX ring per step (at most [`MAX_BATCH`]).
    pub batch: usize,
    /// Frames each port's handoff inbox holds; 0: as many as a ring.
    pub inbox: usize,
    /// How long a sleeping port handed frames may be left asleep, so that
    /// one wake brings it the frames of several steps (or [`WAKE_BATCH`]
    /// of them, whichever comes first); zero: woken at once.
    pub wake_delay: Duration,
    /// How long frames may gather after a step that took fewer than a
    /// batch, before the next ([`XskPort::gather`]); zero: the next step
    /// comes at once, and a port that finds nothing sleeps in `poll`.
    pub gather: Duration,
    /// Try zero-copy before copy mode.
    pub zero_copy: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            frames: 4096,
            frame_size: 4096,
            ring_size: 2048,
            batch: 64,
            inbox: 0,
            wake_delay: Duration::from_micros(50),
            gather: Duration::ZERO,
            zero_copy: true,
        }
    }
}

/// A UMEM allocated and registered for the ports of `queues`, not bound
/// yet ([`XskPort::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    iface: String,
    queues: Vec<u32>,
    cfg: PortConfig,
    ring: QueueSize,
    umem: Umem,
    descs: Vec<FrameDesc>,
}

impl Prepared {
    /// Binds in copy mode without trying zero-copy.
    pub fn copy_only(self) -> Self {
        Self {
            cfg: PortConfig {
                zero_copy: false,
                ..self.cfg
            },
            ..self
        }
    }

    /// Binds a socket to each queue: zero-copy if asked and the driver can
    /// (on a UMEM of its own, prepared again), copy mode otherwise.
    pub fn bind(self) -> Result<Vec<XskPort>, PortError> {
        if !self.cfg.zero_copy {
            return XskPort::open_with(self, BindMode::Copy);
        }
        let (iface, queues, cfg) = (self.iface.clone(), self.queues.clone(), self.cfg);
        match XskPort::open_with(self, BindMode::ZeroCopy) {
            Ok(ports) => Ok(ports),
            Err(e) => {
                debug!(iface, "zero-copy bind failed, trying copy mode: {e}");
                XskPort::open_with(XskPort::prepare(&iface, &queues, &cfg)?, BindMode::Copy)
            }
        }
    }
}

/// How the socket is bound to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindMode {
    /// The NIC DMAs straight into the UMEM.
    ZeroCopy,
    /// The kernel copies between its buffers and the UMEM (veth, generic XDP).
    Copy,
}

/// Why a port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("invalid port configuration: {0}")]
    Config(String),
    #[error("cannot create the UMEM for {iface}: {source}")]
    Umem {
        iface: String,
        #[source]
        source: xsk_rs::umem::UmemCreateError,
    },
    #[error("cannot create a wakeup eventfd: {0}")]
    EventFd(#[source] nix::Error),
    #[error("cannot make an AF_XDP socket close-on-exec: {0}")]
    CloseOnExec(#[source] nix::Error),
    #[error("cannot open an AF_XDP socket on {iface} queue {queue}: {source}")]
    Socket {
        iface: String,
        queue: u32,
        #[source]
        source: xsk_rs::socket::SocketCreateError,
    },
}

/// Where a port's UMEM frames are (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ledger {
    pub frames: usize,
    pub free: usize,
    pub kernel_rx: usize,
    pub kernel_tx: usize,
    pub lent: usize,
    /// Other ports' frames on this port's TX ring (not in `frames`).
    pub borrowed: usize,
}

impl Ledger {
    /// Every frame is accounted for exactly once.
    pub fn balanced(&self) -> bool {
        self.free + self.kernel_rx + self.kernel_tx + self.lent == self.frames
    }
}

/// The most frames a step takes off the RX ring ([`PortConfig::batch`]);
/// as many again may come from the inbox.
pub const MAX_BATCH: usize = 256;

/// Frames waiting in a sleeping port's inbox that wake it without waiting
/// for [`PortConfig::wake_delay`].
pub const WAKE_BATCH: usize = 32;

/// Wakes every port of a UMEM from its `wait` ([`XskPort::alarm`]).
#[derive(Clone, Debug)]
pub struct Alarm(Arc<Exchange>);

impl Alarm {
    pub fn ring(&self) {
        for mailbox in &self.0.mailboxes {
            let _ = mailbox.wake.write(1);
        }
    }
}

/// Where the ports of one UMEM pass each other frames, and the control
/// plane and the ports pass each other packets.
#[derive(Debug)]
struct Exchange {
    /// Answers to health checks, copied out of the frames they came in.
    punted: ArrayQueue<Packet>,
    /// Frames the control plane has the ports send (health checks).
    injected: ArrayQueue<Packet>,
    /// Bytes of UMEM each port owns: port `i` owns `i * share..(i + 1) * share`.
    share: usize,
    mailboxes: Vec<Mailbox>,
}

/// One port's side of the [`Exchange`].
#[derive(Debug)]
struct Mailbox {
    /// Frames handed to this port to process (any port's frames).
    inbox: ArrayQueue<Handed>,
    /// This port's own frames, coming back from other ports.
    home: ArrayQueue<FrameDesc>,
    /// Set while the port sleeps in `poll`: a sender then writes `wake`.
    sleeping: AtomicBool,
    wake: EventFd,
    /// Set when the port's worker stopped processing (it panicked): frames
    /// are no longer handed to it.
    down: AtomicBool,
}

/// A packet between the control plane and the workers, copied, so neither
/// holds the other's memory.
#[derive(Clone, Copy)]
pub struct Packet {
    len: u16,
    bytes: [u8; PACKET_MAX],
}

/// The largest packet passed between the control plane and the workers.
pub const PACKET_MAX: usize = 2048;

/// Packets each way the queues between the control plane and the workers
/// hold.
const CONTROL_QUEUE: usize = 256;

impl Packet {
    fn new(data: &[u8]) -> Option<Self> {
        let mut packet = Self {
            len: u16::try_from(data.len()).ok()?,
            bytes: [0; PACKET_MAX],
        };
        packet.bytes.get_mut(..data.len())?.copy_from_slice(data);
        Some(packet)
    }

    pub fn data(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packet({} bytes)", self.len)
    }
}

/// The control plane's side of the ports of one UMEM: frames it has them
/// send, and the packets they punt to it.
#[derive(Clone, Debug)]
pub struct ControlPath(Arc<Exchange>);

impl ControlPath {
    /// Has a port send `frame` (a whole Ethernet frame) at its next step;
    /// false if the queue is full or the frame too large. [`Self::kick`]
    /// wakes the ports once the frames of a turn are queued.
    pub fn send(&self, frame: &[u8]) -> bool {
        Packet::new(frame).is_some_and(|p| self.0.injected.push(p).is_ok())
    }

    /// Makes sure a port sends what was queued soon: if every port that
    /// serves sleeps in `wait`, one is woken (a port awake sends at its
    /// next step).
    pub fn kick(&self) {
        // Pairs with the fence in `wait`: either the port sees the frames
        // before it sleeps, or we see it sleeping.
        fence(Ordering::SeqCst);
        let serving = || (self.0.mailboxes.iter()).filter(|m| !m.down.load(Ordering::Acquire));
        if serving().all(|m| m.sleeping.load(Ordering::Relaxed))
            && let Some(mailbox) = serving().next()
        {
            let _ = mailbox.wake.write(1);
        }
    }

    /// The next packet a port punted, if any.
    pub fn receive(&self) -> Option<Packet> {
        self.0.punted.pop()
    }
}

/// A frame handed to another port to process, and how many ports handed
/// it on before (this one included).
#[derive(Clone, Copy, Debug)]
struct Handed {
    desc: FrameDesc,
    hops: u8,
}

impl Exchange {
    fn owner(&self, addr: usize) -> usize {
        addr / self.share
    }
}

/// An AF_XDP socket bound to one receive queue, with its share of the UMEM.
#[derive(Debug)]
pub struct XskPort {
    umem: Umem,
    /// This port's index in the exchange.
    index: usize,
    exchange: Arc<Exchange>,
    fill: FillQueue,
    comp: CompQueue,
    rx: RxQueue,
    tx: TxQueue,
    mode: BindMode,
    frames: usize,
    /// Bytes per UMEM frame; frame `i` starts at `i * frame_size`.
    frame_size: usize,
    free: Vec<FrameDesc>,
    kernel_rx: usize,
    kernel_tx: usize,
    lent: usize,
    borrowed: usize,
    /// Frames of the current step: received (the first `batch` slots at
    /// most), then taken from the inbox; and the pipeline's verdicts on them.
    rx_batch: Vec<FrameDesc>,
    /// Per frame of `rx_batch`: the ports it was handed through (0: off
    /// the RX ring).
    rx_hops: Vec<u8>,
    verdicts: Vec<Verdict>,
    batch: usize,
    /// Frames of `rx_batch` the current step is processing: in no ledger
    /// column until dispatched (a worker that panics gets them back).
    processing: usize,
    /// Scratch for descriptors coming off the completion ring.
    comp_batch: Vec<FrameDesc>,
    /// Frames to transmit from the current step.
    tx_batch: Vec<FrameDesc>,
    /// Ports handed a frame in the current step (bit per port index).
    handed_to: u64,
    /// Ports handed frames while they slept and not woken yet (bit per
    /// port index), and since when (monotonic ns; see
    /// [`PortConfig::wake_delay`]).
    deferred: u64,
    deferred_since: u64,
    wake_delay: u64,
    /// See [`PortConfig::gather`].
    gather: Duration,
    /// For the warnings that could otherwise repeat every step.
    warnings: Throttle,
}

/// At most one warning of a kind per port in this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a socket could not be bound because its queue is taken.
fn is_busy(e: &xsk_rs::socket::SocketCreateError) -> bool {
    let io = std::error::Error::source(e).and_then(|e| e.downcast_ref::<std::io::Error>());
    io.and_then(std::io::Error::raw_os_error) == Some(libc::EBUSY)
}

/// How long a bind refused as busy is tried again.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Most ports one UMEM is shared by (a bit each in `XskPort::handed_to`).
pub const MAX_PORTS: usize = 64;

impl XskPort {
    /// Opens one socket on `iface` queue `queue`, with a UMEM of its own.
    pub fn open(iface: &str, queue: u32, cfg: &PortConfig) -> Result<Self, PortError> {
        let mut ports = Self::open_shared(iface, &[queue], cfg)?;
        Ok(ports.pop().expect("one queue, one port"))
    }

    /// Opens a socket on each of `iface`'s `queues`, all on one UMEM of
    /// `cfg.frames` frames per port, so they can hand each other frames:
    /// zero-copy if asked and the driver can, copy mode otherwise. The
    /// caller registers each [`Self::raw_fd`] in the steering program's XSKMAP.
    pub fn open_shared(
        iface: &str,
        queues: &[u32],
        cfg: &PortConfig,
    ) -> Result<Vec<Self>, PortError> {
        Self::prepare(iface, queues, cfg)?.bind()
    }

    /// The first half of [`Self::open_shared`]: the UMEM, allocated and
    /// registered with the kernel, which takes most of the time; nothing
    /// is bound to the queues yet (a Rialto taking over prepares while its
    /// predecessor still holds them).
    pub fn prepare(iface: &str, queues: &[u32], cfg: &PortConfig) -> Result<Prepared, PortError> {
        let bad = |what: &str| PortError::Config(what.to_owned());
        let ring = QueueSize::new(cfg.ring_size).map_err(|_| bad("ring size"))?;
        if cfg.frames < 2 * cfg.ring_size || cfg.batch == 0 || cfg.batch > MAX_BATCH {
            return Err(PortError::Config(format!(
                "frames must be at least twice the ring size, batch from 1 to {MAX_BATCH}"
            )));
        }
        if queues.is_empty() || queues.len() > MAX_PORTS {
            return Err(bad("one to 64 queues per UMEM"));
        }
        let total = u32::try_from(queues.len())
            .ok()
            .and_then(|n| cfg.frames.checked_mul(n))
            .and_then(NonZeroU32::new)
            .ok_or_else(|| bad("frames"))?;
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(cfg.frame_size).map_err(|_| bad("frame size"))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| PortError::Config(e.to_string()))?;
        let (umem, descs) =
            Umem::new(umem_config, total, false).map_err(|source| PortError::Umem {
                iface: iface.to_owned(),
                source,
            })?;
        Ok(Prepared {
            iface: iface.to_owned(),
            queues: queues.to_vec(),
            cfg: *cfg,
            ring,
            umem,
            descs,
        })
    }

    fn open_with(prepared: Prepared, mode: BindMode) -> Result<Vec<Self>, PortError> {
        let Prepared {
            iface,
            queues,
            cfg,
            ring,
            umem,
            descs,
        } = prepared;
        let (iface, queues, cfg) = (iface.as_str(), &queues[..], &cfg);
        let bad = |what: &str| PortError::Config(what.to_owned());
        let frames = cfg.frames as usize;
        let frame_size = cfg.frame_size as usize;
        let mailboxes = queues
            .iter()
            .map(|_| {
                Ok(Mailbox {
                    inbox: ArrayQueue::new(match cfg.inbox {
                        0 => cfg.ring_size as usize,
                        frames => frames,
                    }),
                    home: ArrayQueue::new(frames),
                    sleeping: AtomicBool::new(false),
                    wake: EventFd::from_value_and_flags(
                        0,
                        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
                    )
                    .map_err(PortError::EventFd)?,
                    down: AtomicBool::new(false),
                })
            })
            .collect::<Result<_, PortError>>()?;
        let exchange = Arc::new(Exchange {
            share: frames * frame_size,
            mailboxes,
            punted: ArrayQueue::new(CONTROL_QUEUE),
            injected: ArrayQueue::new(CONTROL_QUEUE),
        });

        let copy = match mode {
            BindMode::ZeroCopy => BindFlags::XDP_ZEROCOPY,
            BindMode::Copy => BindFlags::XDP_COPY,
        };
        let socket_config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            // Our own steering program owns the XSKMAP; libxdp must not load its default.
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(copy | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let name = CString::new(iface).map_err(|_| bad("interface name has a NUL byte"))?;
        let mut ports = Vec::with_capacity(queues.len());
        for (index, (&queue, share)) in queues.iter().zip(descs.chunks(frames)).enumerate() {
            // A queue whose last socket was just closed (by a Rialto handing
            // over) is freed by the kernel a moment later: until then, a
            // bind is refused as busy, and tried again.
            let busy_until = Instant::now() + BUSY_TIMEOUT;
            let (tx, rx, fill_comp) = loop {
                // SAFETY: the UMEM was created for these sockets only; every
                // descriptor later given to their rings comes from its frames.
                match unsafe {
                    Socket::new(socket_config, &umem, &Interface::new(name.clone()), queue)
                } {
                    Err(e) if is_busy(&e) && Instant::now() < busy_until => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    other => {
                        break other.map_err(|source| PortError::Socket {
                            iface: iface.to_owned(),
                            queue,
                            source,
                        })?;
                    }
                }
            };
            // libxdp opens the socket without close-on-exec: a process this
            // one starts (an upgrade) must not keep the queue bound.
            // SAFETY: the socket's descriptor stays open while `tx` lives,
            // which outlives this borrow.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(tx.fd().as_raw_fd()) };
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(PortError::CloseOnExec)?;
            // A second socket on the same queue would share the first one's rings.
            let (fill, comp) = fill_comp.ok_or_else(|| bad("a queue is listed twice"))?;
            let mut port = Self {
                umem: umem.clone(),
                index,
                exchange: Arc::clone(&exchange),
                fill,
                comp,
                rx,
                tx,
                mode,
                frames,
                frame_size,
                rx_batch: vec![FrameDesc::default(); 2 * cfg.batch],
                rx_hops: vec![0; 2 * cfg.batch],
                verdicts: vec![Verdict::Tx; 2 * cfg.batch],
                batch: cfg.batch,
                processing: 0,
                comp_batch: vec![FrameDesc::default(); cfg.ring_size as usize],
                tx_batch: Vec::with_capacity(2 * cfg.batch),
                free: share.to_vec(),
                kernel_rx: 0,
                kernel_tx: 0,
                lent: 0,
                borrowed: 0,
                handed_to: 0,
                deferred: 0,
                deferred_since: 0,
                wake_delay: cfg.wake_delay.as_nanos() as u64,
                gather: cfg.gather,
                warnings: Throttle::new(WARNING_INTERVAL),
            };
            if mode == BindMode::Copy {
                port.raise_tx_budget(cfg.ring_size);
            }
            port.refill();
            ports.push(port);
        }
        Ok(ports)
    }

    /// Lets one `sendto` transmit a whole ring instead of 32 descriptors (Linux >= 6.17).
    fn raise_tx_budget(&self, budget: u32) {
        // SAFETY: plain setsockopt on our own AF_XDP socket with a pointer to a
        // live u32 and its exact size; the kernel only reads it.
        let ret = unsafe {
            libc::setsockopt(
                self.raw_fd(),
                libc::SOL_XDP,
                XDP_MAX_TX_SKB_BUDGET,
                (&raw const budget).cast(),
                size_of::<u32>() as libc::socklen_t,
            )
        };
        if ret != 0 {
            debug!(
                "kernel keeps the copy-mode TX budget of 32: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// The socket, for the steering program's XSKMAP.
    pub fn raw_fd(&self) -> RawFd {
        self.tx.fd().as_raw_fd()
    }

    pub fn mode(&self) -> BindMode {
        self.mode
    }

    pub fn ledger(&self) -> Ledger {
        Ledger {
            frames: self.frames,
            free: self.free.len(),
            kernel_rx: self.kernel_rx,
            kernel_tx: self.kernel_tx,
            lent: self.lent,
            borrowed: self.borrowed,
        }
    }

    /// UMEM addresses of the free frames.
    pub fn free_addrs(&self) -> impl Iterator<Item = usize> + '_ {
        self.free.iter().map(FrameDesc::addr)
    }

    fn mailbox(&self) -> &Mailbox {
        &self.exchange.mailboxes[self.index]
    }

    /// One turn of the loop: takes a batch off the RX ring and what other
    /// ports handed over, lets `process` give each frame its verdict, sends
    /// each where its verdict says, then transmits, recycles completions and
    /// refills. Returns the frames processed.
    pub fn step(
        &mut self,
        tally: &mut Tally,
        process: impl FnOnce(&mut [FrameBuf<'_>], &mut [Verdict]),
    ) -> usize {
        self.welcome_home();
        let received = self.take_received(tally);
        let mut count = received;
        self.rx_hops[..received].fill(0);
        while count < 2 * self.batch
            && let Some(handed) = self.mailbox().inbox.pop()
        {
            self.rx_batch[count] = handed.desc;
            self.rx_hops[count] = handed.hops;
            count += 1;
        }
        tally.handoff_in += (count - received) as u64;
        if count > 0 {
            // Until `process` returns, the batch is ours alone: should it
            // panic, `idle_down` sends these frames home.
            self.processing = count;
            self.run(count, process);
            self.processing = 0;
            self.dispatch(count, tally);
        }
        self.inject(tally);
        self.wake_receivers();
        self.transmit(tally);
        self.recycle();
        self.refill();
        count
    }

    /// Maps the step's `count` frames in place, whole UMEM frames so that
    /// headers can be pushed into the headroom or stripped, and runs
    /// `process` over them; a transmitted frame's descriptor then spans
    /// what the pipeline made of it.
    fn run(&mut self, count: usize, process: impl FnOnce(&mut [FrameBuf<'_>], &mut [Verdict])) {
        let frame_size = self.frame_size;
        let start = |desc: &FrameDesc| desc.addr() - desc.addr() % frame_size;
        // Each array is filled where it lies: `collect` would build it
        // elsewhere and move it, a copy of every entry, used or not, per batch.
        let mut whole = ArrayVec::<FrameDesc, { 2 * MAX_BATCH }>::new();
        whole.extend(self.rx_batch[..count].iter().map(|desc| {
            let mut w = *desc;
            w.set_packet(start(desc), frame_size);
            w
        }));
        let umem = &self.umem;
        let mut data = ArrayVec::<_, { 2 * MAX_BATCH }>::new();
        data.extend(
            whole
                .iter_mut()
                // SAFETY: each frame came off our RX ring or our inbox; until we
                // put it on a ring, an inbox or a home queue nobody else reads or
                // writes it, and these are the only references to it. Each `w`
                // spans exactly one frame of the UMEM every port shares, and no
                // two of them the same frame (a frame is in one place at a time).
                .map(|w| unsafe { umem.data_mut(w) }),
        );
        let mut frames = ArrayVec::<FrameBuf<'_>, { 2 * MAX_BATCH }>::new();
        frames.extend(
            data.iter_mut()
                .zip(self.rx_batch[..count].iter().zip(&self.rx_hops))
                .map(|(d, (desc, &hops))| {
                    FrameBuf::new(
                        d.contents_mut(),
                        desc.addr() - start(desc),
                        desc.lengths().data(),
                    )
                    .handed(hops)
                }),
        );
        process(&mut frames, &mut self.verdicts[..count]);
        for ((desc, frame), verdict) in self.rx_batch[..count]
            .iter_mut()
            .zip(&frames)
            .zip(&self.verdicts)
        {
            if matches!(verdict, Verdict::Tx | Verdict::Punt) {
                let at = start(desc) + frame.start();
                desc.set_packet(at, frame.len());
            }
        }
    }

    /// Sends each frame of the step where its verdict says.
    fn dispatch(&mut self, count: usize, tally: &mut Tally) {
        for i in 0..count {
            let desc = self.rx_batch[i];
            match self.verdicts[i] {
                Verdict::Tx => self.tx_batch.push(desc),
                Verdict::Drop(reason) => {
                    tally.drop(reason);
                    self.release(desc);
                }
                Verdict::Handoff(worker) => {
                    let handed = Handed {
                        desc,
                        hops: self.rx_hops[i].saturating_add(1),
                    };
                    self.hand_off(handed, worker as usize, tally);
                }
                Verdict::Punt => self.punt(desc, tally),
            }
        }
    }

    /// Takes a batch off the RX ring into `rx_batch` and counts it; returns
    /// how many frames came.
    fn take_received(&mut self, tally: &mut Tally) -> usize {
        // SAFETY: the RX ring belongs to this port's UMEM; the descriptors it
        // yields overwrite scratch entries and are ours until handed back.
        let received = unsafe { self.rx.consume(&mut self.rx_batch[..self.batch]) };
        self.kernel_rx -= received;
        for desc in &self.rx_batch[..received] {
            tally.rx_packets += 1;
            tally.rx_bytes += desc.lengths().data() as u64;
        }
        received
    }

    /// The generator's side: writes up to `budget` new frames into free UMEM
    /// frames with `write` (which fills the buffer it is given and returns
    /// the frame's length) and transmits them. Returns how many were posted
    /// on the TX ring; a frame that found no room counts as `tx_ring_full`.
    pub fn send(
        &mut self,
        budget: usize,
        mut write: impl FnMut(&mut [u8]) -> usize,
        tally: &mut Tally,
    ) -> usize {
        self.recycle();
        let count = budget.min(self.free.len()).min(self.tx_batch.capacity());
        for _ in 0..count {
            let Some(mut desc) = self.free.pop() else {
                break;
            };
            let frame_start = desc.addr() - desc.addr() % self.frame_size;
            desc.set_packet(frame_start, self.frame_size);
            // SAFETY: a free frame is ours alone (in no ring, inbox or home
            // queue) and `desc` spans exactly that frame of the UMEM.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let len = write(data.contents_mut()).min(self.frame_size);
            desc.set_packet(frame_start, len);
            self.tx_batch.push(desc);
        }
        let before = tally.tx_packets;
        self.transmit(tally);
        (tally.tx_packets - before) as usize
    }

    /// The sink's side: hands every received frame to `inspect`, then gives
    /// it back to the kernel. Returns how many frames were received.
    pub fn receive(&mut self, mut inspect: impl FnMut(&[u8]), tally: &mut Tally) -> usize {
        let received = self.take_received(tally);
        for i in 0..received {
            let desc = self.rx_batch[i];
            // SAFETY: the frame came off our RX ring and nobody writes it
            // until we post it on the fill ring again, below.
            inspect(unsafe { self.umem.data(&desc) }.contents());
            self.release(desc);
        }
        self.refill();
        received
    }

    /// Copies a punted packet out for the control plane, and frees its frame.
    fn punt(&mut self, desc: FrameDesc, tally: &mut Tally) {
        // SAFETY: the frame was processed in this step and is ours until we
        // release it, below; nobody writes it meanwhile.
        let packet = Packet::new(unsafe { self.umem.data(&desc) }.contents());
        let pushed = packet.is_some_and(|p| self.exchange.punted.push(p).is_ok());
        if pushed {
            tally.punted += 1;
        } else {
            tally.io_drop(IoDrop::PuntFull);
        }
        self.release(desc);
    }

    /// Sends what the control plane queued, as far as free frames and the
    /// step's room go.
    fn inject(&mut self, tally: &mut Tally) {
        while self.tx_batch.len() < self.tx_batch.capacity()
            && !self.free.is_empty()
            && let Some(packet) = self.exchange.injected.pop()
        {
            let mut desc = self.free.pop().expect("checked above");
            let frame_start = desc.addr() - desc.addr() % self.frame_size;
            desc.set_packet(frame_start, self.frame_size);
            let data = packet.data();
            let len = data.len().min(self.frame_size);
            // SAFETY: a free frame is ours alone (in no ring, inbox or home
            // queue) and `desc` spans exactly that frame of the UMEM.
            unsafe { self.umem.data_mut(&mut desc) }.contents_mut()[..len]
                .copy_from_slice(&data[..len]);
            desc.set_packet(frame_start, len);
            self.tx_batch.push(desc);
            tally.injected += 1;
        }
    }

    /// The control plane's side of this port's UMEM.
    pub fn control_path(&self) -> ControlPath {
        ControlPath(Arc::clone(&self.exchange))
    }

    /// Passes an unprocessed frame to port `to`, which owns its flow (or
    /// may have it).
    fn hand_off(&mut self, handed: Handed, to: usize, tally: &mut Tally) {
        let desc = handed.desc;
        let own = self.owns(&desc);
        debug_assert!(
            to != self.index && to < self.exchange.mailboxes.len(),
            "the pipeline hands frames only to other workers"
        );
        let pushed = match self.exchange.mailboxes.get(to) {
            Some(mailbox) if mailbox.down.load(Ordering::Acquire) => Err(IoDrop::WorkerDown),
            Some(mailbox) => mailbox.inbox.push(handed).map_err(|_| IoDrop::HandoffFull),
            None => Err(IoDrop::HandoffFull),
        };
        match pushed {
            Ok(()) => {
                tally.handoff_out += 1;
                self.lent += usize::from(own);
                self.handed_to |= 1 << to;
            }
            Err(reason) => {
                tally.io_drop(reason);
                self.release(desc);
            }
        }
    }

    /// Wakes the ports handed frames, if they sleep in `poll`: at once
    /// with no [`PortConfig::wake_delay`]; else once the first of them has
    /// waited that long, or [`WAKE_BATCH`] frames wait for one of them.
    /// One wake, a write to an eventfd and the sleeper's trip through the
    /// scheduler, then brings several steps' frames.
    fn wake_receivers(&mut self) {
        if self.handed_to != 0 {
            // Pairs with the fence in `wait`: either the receiver sees the
            // frames before it sleeps, or we see it sleeping.
            fence(Ordering::SeqCst);
            for (i, mailbox) in self.exchange.mailboxes.iter().enumerate() {
                if self.handed_to & (1 << i) != 0 && mailbox.sleeping.load(Ordering::Relaxed) {
                    self.deferred |= 1 << i;
                }
            }
            self.handed_to = 0;
        }
        if self.deferred == 0 {
            return;
        }
        let now = crate::worker::monotonic_ns();
        if self.deferred_since == 0 {
            self.deferred_since = now;
        }
        let waiting =
            |i: usize, m: &Mailbox| self.deferred & (1 << i) != 0 && m.inbox.len() >= WAKE_BATCH;
        let due = now.saturating_sub(self.deferred_since) >= self.wake_delay
            || self
                .exchange
                .mailboxes
                .iter()
                .enumerate()
                .any(|(i, m)| waiting(i, m));
        if due {
            self.wake_deferred();
        }
    }

    /// Wakes the ports whose wake was put off, those still asleep (one
    /// awake has seen its frames, or will before it sleeps).
    fn wake_deferred(&mut self) {
        for (i, mailbox) in self.exchange.mailboxes.iter().enumerate() {
            if self.deferred & (1 << i) != 0
                && mailbox.sleeping.load(Ordering::Relaxed)
                && let Err(e) = mailbox.wake.write(1)
            {
                debug!("cannot wake port {i}: {e}");
            }
        }
        self.deferred = 0;
        self.deferred_since = 0;
    }

    fn owns(&self, desc: &FrameDesc) -> bool {
        self.exchange.owner(desc.addr()) == self.index
    }

    /// A frame done with: back to the free pool, or home to its owner.
    fn release(&mut self, desc: FrameDesc) {
        let owner = self.exchange.owner(desc.addr());
        if owner == self.index {
            self.free.push(desc);
        } else {
            let pushed = self.exchange.mailboxes[owner].home.push(desc);
            debug_assert!(pushed.is_ok(), "a home queue holds all its port's frames");
        }
    }

    /// Takes back the frames other ports are done with.
    fn welcome_home(&mut self) {
        while let Some(desc) = self.exchange.mailboxes[self.index].home.pop() {
            self.free.push(desc);
            self.lent -= 1;
        }
    }

    fn transmit(&mut self, tally: &mut Tally) {
        if !self.tx_batch.is_empty() {
            // `produce` posts nothing unless the whole slice fits: clamp to the
            // room (`nb_free` may report more than was asked for).
            let want = self.tx_batch.len();
            let room = (self.tx.nb_free(want as u32) as usize).min(want);
            // SAFETY: these frames were handed to us (received, or from our
            // inbox) and processed above; they belong to the UMEM this socket
            // is bound to, and we do not touch them until completed.
            let sent = unsafe { self.tx.produce(&self.tx_batch[..room]) };
            for i in 0..want {
                let desc = self.tx_batch[i];
                if i < sent {
                    tally.tx_packets += 1;
                    tally.tx_bytes += desc.lengths().data() as u64;
                    if self.owns(&desc) {
                        self.kernel_tx += 1;
                    } else {
                        self.borrowed += 1;
                    }
                } else {
                    tally.io_drop(IoDrop::TxRingFull);
                    self.release(desc);
                }
            }
            self.tx_batch.clear();
        }
        // Copy mode transmits only when kicked, and at most a budget per kick:
        // kick while anything is outstanding.
        if self.kernel_tx + self.borrowed > 0 && self.tx.needs_wakeup() {
            // EAGAIN, EBUSY, ENOBUFS, ENETDOWN are swallowed by xsk-rs: the
            // next step kicks again. Anything else would repeat every step.
            if let Err(e) = self.tx.wakeup()
                && let Some(held) = self.warnings.allow()
            {
                warn!(held_back = held, "TX wakeup failed: {e}");
            }
        }
    }

    /// Takes transmitted frames back from the completion ring; other
    /// ports' frames go home.
    fn recycle(&mut self) {
        // SAFETY: the completion ring belongs to this socket and returns
        // frames we posted for TX; they are ours again.
        let done = unsafe { self.comp.consume(&mut self.comp_batch) };
        for i in 0..done {
            let desc = self.comp_batch[i];
            if self.owns(&desc) {
                self.kernel_tx -= 1;
            } else {
                self.borrowed -= 1;
            }
            self.release(desc);
        }
    }

    /// Posts as many free frames on the fill ring as it has room for.
    fn refill(&mut self) {
        let want = self.free.len();
        let room = (self.fill.nb_free(want as u32) as usize).min(want);
        if room > 0 {
            let start = self.free.len() - room;
            // SAFETY: free frames are ours, belong to this port's share of the
            // UMEM, and are in no ring or queue; the kernel owns them from here
            // until RX.
            let posted = unsafe { self.fill.produce(&self.free[start..]) };
            if posted == room {
                self.free.truncate(start);
                self.kernel_rx += room;
            }
        }
        if self.fill.needs_wakeup() {
            // A zero-timeout poll tells the driver the fill ring has frames again.
            if let Err(e) = self.fill.wakeup(self.rx.fd_mut(), 0)
                && let Some(held) = self.warnings.allow()
            {
                warn!(held_back = held, "fill wakeup failed: {e}");
            }
        }
    }

    /// Sleeps until a frame arrives, another port hands one over, or
    /// `timeout` passes; or, if a port this one handed frames to waits to
    /// be woken, until it is due to be.
    pub fn wait(&mut self, timeout: Duration) {
        let timeout = self.until_wake_due(timeout);
        let fd = self.raw_fd();
        let mailbox = &self.exchange.mailboxes[self.index];
        mailbox.sleeping.store(true, Ordering::Relaxed);
        // Pairs with the fence in `wake_receivers`.
        fence(Ordering::SeqCst);
        if mailbox.inbox.is_empty() && self.exchange.injected.is_empty() {
            let timeout = libc::timespec {
                tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                tv_nsec: timeout.subsec_nanos().into(),
            };
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: mailbox.wake.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let (n, no_mask) = (fds.len() as libc::nfds_t, std::ptr::null());
            // SAFETY: ppoll reads and writes exactly the two pollfd structs of
            // this live array and reads the live timespec; both descriptors
            // are open for its duration; a null mask leaves the signals be.
            if unsafe { libc::ppoll(fds.as_mut_ptr(), n, &timeout, no_mask) } < 0
                && let Some(held) = self.warnings.allow()
            {
                let e = std::io::Error::last_os_error();
                warn!(held_back = held, "ppoll failed: {e}");
            }
        }
        mailbox.sleeping.store(false, Ordering::Relaxed);
        // Non-blocking: resets the counter if a sender wrote it.
        let _ = mailbox.wake.read();
    }

    /// After a step that took `taken` frames, fewer than a batch: with a
    /// [`PortConfig::gather`] window, sleeps that long (or until a wake
    /// this port put off is due), awake to nobody, while the RX ring and
    /// the inbox fill, so that the next step takes several frames and a
    /// frame costs a fraction of a wake and a TX kick (NAPI's deferred
    /// interrupts, `napi_defer_hard_irqs`, trade the same way). A frame
    /// waits up to the window longer; a busy port, its batches full,
    /// never sleeps.
    pub fn gather(&mut self, taken: usize) {
        if self.gather.is_zero() || taken == 0 || taken >= self.batch {
            return;
        }
        let window = self.until_wake_due(self.gather);
        std::thread::sleep(window);
    }

    /// `timeout`, or less if a wake this port put off is due sooner; one
    /// due already is done now.
    fn until_wake_due(&mut self, timeout: Duration) -> Duration {
        if self.deferred != 0 {
            let waited = crate::worker::monotonic_ns().saturating_sub(self.deferred_since);
            match self.wake_delay.checked_sub(waited) {
                Some(left) if left > 0 => return timeout.min(Duration::from_nanos(left)),
                _ => self.wake_deferred(),
            }
        }
        timeout
    }

    /// What wakes every port of this UMEM from its `wait`: for a stop that
    /// should not wait for the idle ones' poll to time out.
    pub fn alarm(&self) -> Alarm {
        Alarm(Arc::clone(&self.exchange))
    }

    /// Whether frames are still out for transmission or handed to us.
    pub fn busy(&self) -> bool {
        self.kernel_tx + self.borrowed > 0 || !self.mailbox().inbox.is_empty()
    }

    /// After the worker stopped processing (it panicked): frames are no
    /// longer handed to this port, and one call sends home what was handed
    /// to it and takes back what is done with, so the other ports' frames
    /// and its own keep coming home. Call it until the worker stops.
    pub fn idle_down(&mut self) {
        self.mailbox().down.store(true, Ordering::Release);
        let interrupted = std::mem::take(&mut self.processing);
        for i in 0..interrupted {
            self.release(self.rx_batch[i]);
        }
        // Frames handed before the worker stopped: their owners are not
        // left asleep until their idle poll.
        self.wake_deferred();
        self.idle_turn(&mut Tally::default());
    }

    /// A turn that processes nothing: what was handed over goes home
    /// unprocessed, and what is out on the TX ring is kicked and taken back.
    fn idle_turn(&mut self, tally: &mut Tally) {
        while let Some(handed) = self.mailbox().inbox.pop() {
            self.release(handed.desc);
        }
        self.transmit(tally);
        self.recycle();
        self.welcome_home();
    }

    /// Stops processing and waits (up to `timeout`) for every transmitted
    /// frame to come back and every lent frame to come home; frames other
    /// ports handed over and not yet processed are sent home unprocessed.
    /// Every port of the UMEM must have stopped stepping first. Returns
    /// where the frames are then.
    pub fn drain(&mut self, timeout: Duration) -> Ledger {
        let deadline = Instant::now() + timeout;
        let mut tally = Tally::default();
        loop {
            self.idle_turn(&mut tally);
            if self.kernel_tx + self.borrowed + self.lent == 0 || Instant::now() >= deadline {
                return self.ledger();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Lets a warning that can repeat every turn of a worker's loop through at
/// most once per interval, and says how many were held back meanwhile.
#[derive(Debug)]
pub struct Throttle {
    interval: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` if the warning may be logged now, `n` being how many were
    /// held back since the last one; `None` if it is held back.
    pub fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|last| now - last < self.interval) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_interval_and_counts_the_rest() {
        let mut t = Throttle::new(std::time::Duration::from_millis(50));
        assert_eq!(t.allow(), Some(0));
        assert_eq!((t.allow(), t.allow()), (None, None));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(t.allow(), Some(2));
    }
}
