//! Rialto's appliance: AF_XDP ports, pinned workers and the packet pipeline.
//!
//! - [`wire`]: in-place header views;
//! - [`pipeline`]: the pure per-frame function, `process(frame, now) -> Verdict`;
//! - [`afxdp`]: one AF_XDP socket and its UMEM, the only `unsafe` code;
//! - [`worker`]: a thread per receive queue, looping over the pipeline;
//! - [`stats`]: per-worker counters.

pub mod afxdp;
pub mod pipeline;
pub mod stats;
pub mod wire;
pub mod worker;
