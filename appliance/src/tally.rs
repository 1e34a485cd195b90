//! What one step of a port did: a plain tally on the worker's stack,
//! published to the worker's atomics ([`crate::stats`]) once per batch.

use rialto_dataplane::DropReason;
use strum::EnumCount;

/// Why the I/O layer, not the pipeline, dropped a frame. Counted beside
/// the pipeline's [`DropReason`]s, under the same metric.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, strum::EnumCount, strum::EnumIter, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum IoDrop {
    /// The TX ring had no room for the frame.
    TxRingFull,
    /// The worker that owns the frame's flow had no room in its inbox.
    HandoffFull,
    /// The frame was handed to a worker that stopped (it panicked).
    WorkerDown,
    /// The control plane had no room for a health check's answer.
    PuntFull,
}

impl IoDrop {
    /// The metric label.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames handed to the worker owning their flow, and taken from others.
    pub handoff_out: u64,
    pub handoff_in: u64,
    /// Health checks' answers passed to the control plane, and checks sent
    /// for it: counted apart from client traffic (and in rx and tx too).
    pub punted: u64,
    pub injected: u64,
    pub drops: [u64; DropReason::COUNT],
    pub io_drops: [u64; IoDrop::COUNT],
}

impl Tally {
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    #[inline]
    pub fn io_drop(&mut self, reason: IoDrop) {
        self.io_drops[reason as usize] += 1;
    }
}
