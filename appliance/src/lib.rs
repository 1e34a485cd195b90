//! Rialto's appliance: AF_XDP ports, pinned workers and the packet pipeline.
//!
//! - [`wire`]: in-place header views;
//! - [`pipeline`]: the pure per-frame function, `process(frame, now) -> Verdict`;
//! - [`afxdp`]: AF_XDP sockets on a shared UMEM and the handoff between
//!   them, the only `unsafe` code;
//! - [`replay`]: the pipeline over a pcap capture, offline;
//! - [`worker`]: a thread per receive queue, looping over the pipeline;
//! - [`nexthop`]: the next hop's MAC, learned and followed over rtnetlink;
//! - [`stats`]: per-worker counters;
//! - [`fixtures`]: the frames the tests, the benchmarks and the pcap dumps share;
//! - [`fuzzing`]: the fuzz target's body, also run over its corpus by a test;
//! - [`traffic`]: the traffic generator and sink (`rialto gen`, `rialto sink`).

pub mod afxdp;
pub mod fixtures;
pub mod fuzzing;
pub mod nexthop;
pub mod pipeline;
pub mod replay;
pub mod stats;
pub mod traffic;
pub mod wire;
pub mod worker;
