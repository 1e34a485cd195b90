//! One AF_XDP socket and its UMEM: the only place Rialto touches the rings.
//!
//! Every UMEM frame is in exactly one place at any moment, and the port keeps
//! the count ([`Ledger`]):
//! - `free`: ours, idle, in `XskPort::free`;
//! - `kernel_rx`: posted on the fill ring, or received and waiting in the RX ring;
//! - `kernel_tx`: posted on the TX ring, not yet back through the completion ring.
//!
//! Frames being processed are in none of these only inside [`XskPort::step`].

use std::{
    ffi::CString,
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use serde::Serialize;
use tracing::debug;
use xsk_rs::{
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
};

use crate::{
    pipeline::{DropReason, FrameBuf, Pipeline, Verdict},
    stats::Tally,
};

/// `SOL_XDP` socket option (Linux >= 6.17): how many descriptors one `sendto`
/// may transmit in copy mode (default 32).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// Sizes of one port's UMEM and rings.
#[derive(Clone, Copy, Debug)]
pub struct PortConfig {
    /// UMEM frames; at least twice `ring_size`, so the fill ring can be kept
    /// full while as many frames again are in flight.
    pub frames: u32,
    /// Bytes per frame (a power of two, 2048 or 4096).
    pub frame_size: u32,
    /// Slots in each of the four rings (a power of two).
    pub ring_size: u32,
    /// Frames taken from the RX ring per step.
    pub batch: usize,
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
            zero_copy: true,
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
    #[error("cannot create the UMEM for {iface} queue {queue}: {source}")]
    Umem {
        iface: String,
        queue: u32,
        #[source]
        source: xsk_rs::umem::UmemCreateError,
    },
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
}

impl Ledger {
    /// Every frame is accounted for exactly once.
    pub fn balanced(&self) -> bool {
        self.free + self.kernel_rx + self.kernel_tx == self.frames
    }
}

/// An AF_XDP socket bound to one receive queue, with its own UMEM.
#[derive(Debug)]
pub struct XskPort {
    umem: Umem,
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
    /// Scratch for descriptors coming off the RX and completion rings.
    rx_batch: Vec<FrameDesc>,
    comp_batch: Vec<FrameDesc>,
    /// Frames to transmit from the current step.
    tx_batch: Vec<FrameDesc>,
}

impl XskPort {
    /// Opens a socket on `iface` queue `queue`: zero-copy if asked and the
    /// driver can, copy mode otherwise. The caller registers [`Self::raw_fd`]
    /// in the steering program's XSKMAP.
    pub fn open(iface: &str, queue: u32, cfg: &PortConfig) -> Result<Self, PortError> {
        if cfg.zero_copy {
            match Self::open_with(iface, queue, cfg, BindMode::ZeroCopy) {
                Ok(port) => return Ok(port),
                Err(e) => debug!(iface, queue, "zero-copy bind failed, trying copy mode: {e}"),
            }
        }
        Self::open_with(iface, queue, cfg, BindMode::Copy)
    }

    fn open_with(
        iface: &str,
        queue: u32,
        cfg: &PortConfig,
        mode: BindMode,
    ) -> Result<Self, PortError> {
        let bad = |what: &str| PortError::Config(what.to_owned());
        let ring = QueueSize::new(cfg.ring_size).map_err(|_| bad("ring size"))?;
        let frames = NonZeroU32::new(cfg.frames).ok_or_else(|| bad("zero frames"))?;
        if cfg.frames < 2 * cfg.ring_size || cfg.batch == 0 {
            return Err(bad(
                "frames must be at least twice the ring size, batch non-zero",
            ));
        }
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(cfg.frame_size).map_err(|_| bad("frame size"))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| PortError::Config(e.to_string()))?;
        let (umem, free) =
            Umem::new(umem_config, frames, false).map_err(|source| PortError::Umem {
                iface: iface.to_owned(),
                queue,
                source,
            })?;

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
        let socket_err = |source| PortError::Socket {
            iface: iface.to_owned(),
            queue,
            source,
        };
        // SAFETY: the UMEM was created just above for this socket only; every
        // descriptor later given to these rings comes from that UMEM's frames.
        let (tx, rx, fill_comp) =
            unsafe { Socket::new(socket_config, &umem, &Interface::new(name), queue) }
                .map_err(socket_err)?;
        let (fill, comp) =
            fill_comp.expect("the first socket on a UMEM gets its fill and completion rings");

        let mut port = Self {
            umem,
            fill,
            comp,
            rx,
            tx,
            mode,
            frames: free.len(),
            frame_size: cfg.frame_size as usize,
            rx_batch: vec![FrameDesc::default(); cfg.batch],
            comp_batch: vec![FrameDesc::default(); cfg.ring_size as usize],
            tx_batch: Vec::with_capacity(cfg.batch),
            free,
            kernel_rx: 0,
            kernel_tx: 0,
        };
        if mode == BindMode::Copy {
            port.raise_tx_budget(cfg.ring_size);
        }
        port.refill();
        Ok(port)
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
        }
    }

    /// UMEM addresses of the free frames.
    pub fn free_addrs(&self) -> impl Iterator<Item = usize> + '_ {
        self.free.iter().map(FrameDesc::addr)
    }

    /// One turn of the loop: receive a batch, run the pipeline over it,
    /// transmit, recycle completions and refill. Returns the frames received.
    pub fn step(&mut self, pipeline: &mut Pipeline, now: u64, tally: &mut Tally) -> usize {
        // SAFETY: the RX ring belongs to this port's UMEM; the descriptors it
        // yields overwrite scratch entries and are ours until handed back.
        let received = unsafe { self.rx.consume(&mut self.rx_batch) };
        self.kernel_rx -= received;
        for i in 0..received {
            let mut desc = self.rx_batch[i];
            let (addr, len) = (desc.addr(), desc.lengths().data());
            tally.rx_packets += 1;
            tally.rx_bytes += len as u64;
            // The pipeline sees the whole UMEM frame, so it can push headers
            // into the headroom in front of the packet or strip them.
            let frame_start = addr - addr % self.frame_size;
            let mut whole = desc;
            whole.set_packet(frame_start, self.frame_size);
            // SAFETY: the kernel passed this frame to us on our RX ring; until we
            // put it on the TX or fill ring nobody else reads or writes it, and
            // this is the only reference to it. `whole` spans exactly that frame.
            let mut data = unsafe { self.umem.data_mut(&mut whole) };
            let mut frame = FrameBuf::new(data.contents_mut(), addr - frame_start, len);
            match pipeline.process(&mut frame, now) {
                Verdict::Tx => {
                    desc.set_packet(frame_start + frame.start(), frame.len());
                    self.tx_batch.push(desc);
                }
                Verdict::Drop(reason) => {
                    tally.drop(reason);
                    self.free.push(desc);
                }
            }
        }
        pipeline.tick(now);
        self.transmit(tally);
        self.recycle();
        self.refill();
        received
    }

    fn transmit(&mut self, tally: &mut Tally) {
        if !self.tx_batch.is_empty() {
            // `produce` posts nothing unless the whole slice fits: clamp to the
            // room (`nb_free` may report more than was asked for).
            let want = self.tx_batch.len();
            let room = (self.tx.nb_free(want as u32) as usize).min(want);
            // SAFETY: these frames are ours (received and processed above) and
            // belong to this port's UMEM; we do not touch them until completed.
            let sent = unsafe { self.tx.produce(&self.tx_batch[..room]) };
            for desc in &self.tx_batch[..sent] {
                tally.tx_packets += 1;
                tally.tx_bytes += desc.lengths().data() as u64;
            }
            for &desc in &self.tx_batch[sent..] {
                tally.drop(DropReason::TxRingFull);
                self.free.push(desc);
            }
            self.kernel_tx += sent;
            self.tx_batch.clear();
        }
        // Copy mode transmits only when kicked, and at most a budget per kick:
        // kick while anything is outstanding.
        if self.kernel_tx > 0 && self.tx.needs_wakeup() {
            // EAGAIN, EBUSY, ENOBUFS, ENETDOWN are swallowed by xsk-rs: the
            // next step kicks again. Anything else would repeat every step.
            if let Err(e) = self.tx.wakeup() {
                debug!("TX wakeup failed: {e}");
            }
        }
    }

    /// Takes transmitted frames back from the completion ring.
    fn recycle(&mut self) {
        // SAFETY: the completion ring belongs to this port's UMEM and returns
        // frames we posted for TX; they are ours again.
        let done = unsafe { self.comp.consume(&mut self.comp_batch) };
        self.free.extend_from_slice(&self.comp_batch[..done]);
        self.kernel_tx -= done;
    }

    /// Posts as many free frames on the fill ring as it has room for.
    fn refill(&mut self) {
        let want = self.free.len();
        let room = (self.fill.nb_free(want as u32) as usize).min(want);
        if room > 0 {
            let start = self.free.len() - room;
            // SAFETY: free frames are ours, belong to this port's UMEM, and are
            // in no other ring; the kernel owns them from here until RX.
            let posted = unsafe { self.fill.produce(&self.free[start..]) };
            if posted == room {
                self.free.truncate(start);
                self.kernel_rx += room;
            }
        }
        if self.fill.needs_wakeup() {
            // A zero-timeout poll tells the driver the fill ring has frames again.
            if let Err(e) = self.fill.wakeup(self.rx.fd_mut(), 0) {
                debug!("fill wakeup failed: {e}");
            }
        }
    }

    /// Sleeps until a frame arrives or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        if let Err(e) = self.rx.poll(ms) {
            debug!("poll failed: {e}");
        }
    }

    /// Whether frames are still out for transmission.
    pub fn transmitting(&self) -> bool {
        self.kernel_tx > 0
    }

    /// Stops receiving and waits (up to `timeout`) for every transmitted frame
    /// to come back; returns where the frames are then.
    pub fn drain(&mut self, timeout: Duration) -> Ledger {
        let deadline = Instant::now() + timeout;
        let mut tally = Tally::default();
        while self.kernel_tx > 0 && Instant::now() < deadline {
            self.transmit(&mut tally);
            self.recycle();
            if self.kernel_tx > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.ledger()
    }
}
