//! Offline replay: the pipeline over a capture, without a NIC.
//!
//! How operators debug their rules, and how the tests feed real captures:
//! every frame of the input goes through the same `Pipeline::process` the
//! workers run, with the capture's timestamps as the clock; transmitted
//! frames are written to the output capture with their input timestamps.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    sync::Arc,
    time::Duration,
};

use pcap_file::{
    DataLink, PcapError, TsResolution,
    pcap::{PcapPacket, PcapReader, PcapWriter},
};
use rialto_dataplane::{
    OwnedFrame, Verdict,
    pipeline::{
        balance::{Balancer, Counters},
        conntrack::ConntrackStats,
    },
};
use rialto_tables::Snapshot;
use serde::Serialize;

/// Which stages run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stages {
    /// The whole balancer, as `rialto run` does.
    All,
    /// Decapsulation only: VXLAN from a peer becomes its inner frame.
    Decapsulate,
}

/// What a replay did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub frames: u64,
    pub tx: u64,
    pub dropped: u64,
    pub drops: BTreeMap<&'static str, u64>,
    /// Answers to health checks (no checker runs offline: not written).
    pub punted: u64,
    /// Frames whose captured length is shorter than they were on the wire.
    pub cut_short: u64,
    /// Whether the capture itself ends inside a record (a file cut short):
    /// the summary is of the records before it.
    pub truncated: bool,
    pub counters: Counters,
    /// The flow table's events: created, expired, evicted (the table full),
    /// live at the end.
    pub flows: ConntrackStats,
    /// The flow table's size (`limits.flows_per_worker`).
    pub capacity: u64,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read the input capture: {0}")]
    Read(#[source] pcap_file::PcapError),
    #[error("cannot write the output capture: {0}")]
    Write(#[source] pcap_file::PcapError),
    #[error("the input capture's link type is {0:?}; only Ethernet captures can be replayed")]
    LinkType(DataLink),
}

/// Replays `input` (a pcap file) through a fresh worker on `tables`,
/// writing what it transmits to `output`.
pub fn replay(
    tables: Arc<Snapshot>,
    stages: Stages,
    input: impl Read,
    output: impl Write,
) -> Result<Summary, ReplayError> {
    let mut reader = PcapReader::new(input).map_err(ReplayError::Read)?;
    let header = reader.header();
    let datalink = header.datalink;
    let nanos_per_tick = match header.ts_resolution {
        TsResolution::MicroSecond => 1_000,
        TsResolution::NanoSecond => 1,
    };
    if datalink != DataLink::ETHERNET {
        return Err(ReplayError::LinkType(datalink));
    }
    let mut writer = PcapWriter::new(output).map_err(ReplayError::Write)?;
    let mut balancer = Balancer::new(tables, 0, 1, [0; 6]);
    let mut summary = Summary::default();
    let mut frame = OwnedFrame::new(&[]);
    // Raw packets: pcap-file's checked ones refuse a frame longer on the wire
    // than the file's snap length, which real captures do hold.
    while let Some(packet) = reader.next_raw_packet() {
        let packet = match packet {
            Ok(packet) => packet,
            Err(PcapError::IncompleteBuffer) => {
                summary.truncated = true;
                break;
            }
            Err(PcapError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                summary.truncated = true;
                break;
            }
            Err(e) => return Err(ReplayError::Read(e)),
        };
        summary.frames += 1;
        if packet.incl_len < packet.orig_len {
            summary.cut_short += 1;
        }
        let timestamp = Duration::from_secs(packet.ts_sec.into())
            + Duration::from_nanos(u64::from(packet.ts_frac) * nanos_per_tick);
        let now = u64::try_from(timestamp.as_nanos()).unwrap_or(u64::MAX);
        frame.load(&packet.data);
        let verdict = frame.with(|buf| match stages {
            Stages::All => {
                let verdict = balancer.process(buf, now);
                balancer.tick(now);
                verdict
            }
            Stages::Decapsulate => balancer.decapsulate_only(buf),
        });
        match verdict {
            Verdict::Tx => {
                summary.tx += 1;
                let data = frame.data();
                writer
                    .write_packet(&PcapPacket::new(timestamp, data.len() as u32, data))
                    .map_err(ReplayError::Write)?;
            }
            Verdict::Handoff(_) => unreachable!("replay runs a single worker"),
            // No checker runs offline: an answer to a check is not written.
            Verdict::Punt => summary.punted += 1,
            Verdict::Drop(reason) => {
                summary.dropped += 1;
                *summary.drops.entry(reason.name()).or_default() += 1;
            }
        }
    }
    summary.counters = balancer.counters();
    summary.flows = balancer.flows().stats();
    summary.capacity = balancer.flows().capacity() as u64;
    Ok(summary)
}
