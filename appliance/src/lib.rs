//! Rialto's appliance: AF_XDP ports, pinned workers and the packet pipeline.
//!
//! - [`wire`]: in-place header views;
//! - [`pipeline`]: the pure per-frame function, `process(frame, now) -> Verdict`;
//! - [`afxdp`]: one AF_XDP socket and its UMEM, the only `unsafe` code;
//! - [`replay`]: the pipeline over a pcap capture, offline;
//! - [`worker`]: a thread per receive queue, looping over the pipeline;
//! - [`stats`]: per-worker counters;
//! - [`fixtures`]: the frames the tests, the benchmarks and the pcap dumps share.

pub mod afxdp;
pub mod fixtures;
pub mod pipeline;
pub mod replay;
pub mod stats;
pub mod wire;
pub mod worker;
