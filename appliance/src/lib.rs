//! Rialto's appliance around the dataplane: AF_XDP ports, pinned workers,
//! and what serves them.
//!
//! - [`afxdp`]: AF_XDP sockets on a shared UMEM and the handoff between
//!   them, the only `unsafe` code of the appliance with [`shm`];
//! - [`state`] and [`shm`]: the flow tables in files mapped shared, which
//!   outlive the process, and reading them back after a restart;
//! - [`worker`]: a thread per receive queue, looping over its port and the
//!   pipeline (`rialto-dataplane`);
//! - [`tally`] and [`stats`]: what a step did, and each worker's totals;
//! - [`host`]: the config file, the uplink's MAC and queues;
//! - [`nexthop`]: the next hop's MAC, learned and followed over rtnetlink;
//! - [`replay`]: the pipeline over a pcap capture, offline (it needs only
//!   the dataplane).

pub mod afxdp;
pub mod fleet;
pub mod health;
pub mod host;
pub mod nexthop;
pub mod replay;
pub mod shm;
pub mod state;
pub mod stats;
pub mod tally;
pub mod worker;
