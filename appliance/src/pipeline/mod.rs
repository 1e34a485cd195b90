//! The per-frame work: a pure function of the frame and the time.
//!
//! [`Pipeline::process`] does no I/O, so unit tests, the benchmarks and the
//! live AF_XDP loop all run exactly the same code.

mod reflect;

use crate::wire;

/// What to do with a frame once processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the (rewritten) frame out of the interface it came in on.
    Tx,
    /// Drop it, counted under the reason.
    Drop(DropReason),
}

/// Why a frame was dropped. The names are the metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Headers cut short, or a length field inconsistent with the frame.
    Malformed,
    /// Neither IPv4 nor IPv6.
    NotIp,
    /// The TX ring had no room for the frame.
    TxRingFull,
}

impl DropReason {
    /// Every reason, in counter-index order.
    pub const ALL: [Self; 3] = [Self::Malformed, Self::NotIp, Self::TxRingFull];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NotIp => "not_ip",
            Self::TxRingFull => "tx_ring_full",
        }
    }
}

impl From<wire::Error> for Verdict {
    fn from(_: wire::Error) -> Self {
        Self::Drop(DropReason::Malformed)
    }
}

/// The job a worker does on each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Swap Ethernet, IP and UDP/TCP source and destination, and send the
    /// frame back: the bare AF_XDP baseline the benchmarks compare against.
    Reflect,
}

/// A worker's pipeline.
#[derive(Debug)]
pub struct Pipeline {
    mode: Mode,
}

impl Pipeline {
    pub fn new(mode: Mode) -> Self {
        Self { mode }
    }

    /// Processes one frame in place. `now` is the worker's monotonic clock in
    /// nanoseconds, read once per batch.
    #[inline]
    pub fn process(&mut self, frame: &mut [u8], _now: u64) -> Verdict {
        match self.mode {
            Mode::Reflect => reflect::process(frame),
        }
    }
}
