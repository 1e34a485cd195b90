//! The sending side: records in, Updates and Heartbeats out, Nacks answered.

use std::collections::VecDeque;

use crate::wire::{self, Kind, OVERHEAD, RANGE_LEN};
use crate::{ConfigError, Key, Reject, RejectCounts};

/// Counters of a [`Sender`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Updates datagrams sent (each once; resends are counted apart).
    pub datagrams_sent: u64,
    /// Records sent in those datagrams.
    pub records_sent: u64,
    /// Heartbeats made.
    pub heartbeats_sent: u64,
    /// Nacks accepted.
    pub nacks_received: u64,
    /// Retained Updates datagrams resent in answer to Nacks.
    pub datagrams_resent: u64,
    /// Gone datagrams sent in answer to Nacks.
    pub gone_sent: u64,
    /// Sequence numbers asked for that were no longer retained.
    pub sequences_gone: u64,
    /// Datagrams given to [`Sender::handle`] and refused, by reason.
    pub rejected: RejectCounts,
}

/// The sending side of one node: packs the records the node pushes into
/// numbered Updates datagrams, makes Heartbeats, and answers Nacks from a
/// ring of the last `retain` Updates.
///
/// The same datagrams go to every peer: the sender keeps no per-receiver
/// state.
#[derive(Debug)]
pub struct Sender {
    node: u16,
    epoch: u64,
    key: Key,
    record_len: usize,
    /// Records that fit in one Updates.
    per_datagram: usize,
    retain: usize,
    /// Records pushed since the last flush, back to back.
    queue: Vec<u8>,
    /// The last sequence number used; 0 before the first Updates.
    last_seq: u64,
    /// The last `retain` Updates sent, oldest first; the last one has
    /// sequence number `last_seq`.
    ring: VecDeque<Vec<u8>>,
    stats: SenderStats,
}

impl Sender {
    /// A sender for node `node`, whose process drew `epoch` at start (it must
    /// differ from the epochs of the node's earlier runs: draw it at random).
    /// Records are `record_len` bytes, datagrams at most `max_datagram`
    /// bytes, and the last `retain` Updates datagrams are kept to answer
    /// Nacks.
    pub fn new(
        node: u16,
        epoch: u64,
        key: Key,
        record_len: usize,
        max_datagram: usize,
        retain: usize,
    ) -> Result<Sender, ConfigError> {
        if record_len == 0 {
            return Err(ConfigError::ZeroRecordLen);
        }
        let per_datagram =
            (max_datagram.saturating_sub(OVERHEAD) / record_len).min(usize::from(u16::MAX));
        if per_datagram == 0 {
            return Err(ConfigError::DatagramTooSmall {
                max_datagram,
                item: "record",
                item_len: record_len,
            });
        }
        Ok(Sender {
            node,
            epoch,
            key,
            record_len,
            per_datagram,
            retain,
            queue: Vec::new(),
            last_seq: 0,
            ring: VecDeque::with_capacity(retain),
            stats: SenderStats::default(),
        })
    }

    /// This node's id.
    pub fn node(&self) -> u16 {
        self.node
    }

    /// This process's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last sequence number used, 0 before the first Updates.
    pub fn last_sequence(&self) -> u64 {
        self.last_seq
    }

    /// How many records fit in one Updates datagram.
    pub fn records_per_datagram(&self) -> usize {
        self.per_datagram
    }

    /// How many records are queued, waiting for [`Sender::flush`].
    pub fn queued(&self) -> usize {
        self.queue.len() / self.record_len
    }

    /// The counters.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// Queues a record for the next [`Sender::flush`]. The queue holds
    /// everything pushed since the last flush: flush regularly.
    pub fn push(&mut self, record: &[u8]) -> Result<(), ConfigError> {
        if record.len() != self.record_len {
            return Err(ConfigError::RecordLen {
                expected: self.record_len,
                got: record.len(),
            });
        }
        self.queue.extend_from_slice(record);
        Ok(())
    }

    /// Packs every queued record into Updates datagrams, appended to `out`
    /// in sequence order, to be sent to every peer. Each takes the next
    /// sequence number and is retained for Nacks.
    pub fn flush(&mut self, out: &mut Vec<Vec<u8>>) {
        let queue = std::mem::take(&mut self.queue);
        for records in queue.chunks(self.per_datagram * self.record_len) {
            let count = records.len() / self.record_len;
            self.last_seq += 1;
            let mut buf = wire::start(
                Kind::Updates,
                self.node,
                self.epoch,
                self.last_seq,
                // `per_datagram` is at most `u16::MAX`.
                u16::try_from(count).unwrap_or(u16::MAX),
                records.len(),
            );
            buf.extend_from_slice(records);
            let datagram = wire::seal(buf, &self.key);
            if self.retain > 0 {
                if self.ring.len() == self.retain {
                    self.ring.pop_front();
                }
                self.ring.push_back(datagram.clone());
            }
            out.push(datagram);
            self.stats.datagrams_sent += 1;
            self.stats.records_sent += count as u64;
        }
        // Reuse the allocation.
        self.queue = queue;
        self.queue.clear();
    }

    /// A Heartbeat carrying the last sequence number used, to be sent to
    /// every peer regularly (and after the last flush of a burst), so that
    /// receivers notice lost Updates at the tail.
    pub fn heartbeat(&mut self) -> Vec<u8> {
        self.stats.heartbeats_sent += 1;
        let buf = wire::start(Kind::Heartbeat, self.node, self.epoch, self.last_seq, 0, 0);
        wire::seal(buf, &self.key)
    }

    /// Handles a datagram sent to this node's sender: a Nack from peer
    /// `from_node` (the caller maps the source address to the peer's id, and
    /// refuses datagrams from other addresses itself). Returns the datagrams
    /// to send back to that peer: the retained Updates asked for, in
    /// sequence order, then at most one Gone covering what was asked for and
    /// is no longer retained. Sequence numbers not yet used are ignored.
    pub fn handle(&mut self, from_node: u16, bytes: &[u8]) -> Result<Vec<Vec<u8>>, Reject> {
        let result = self.answer(from_node, bytes);
        if let Err(reason) = result {
            self.stats.rejected.count(reason);
        }
        result
    }

    fn answer(&mut self, from_node: u16, bytes: &[u8]) -> Result<Vec<Vec<u8>>, Reject> {
        let nack = wire::open(bytes, &self.key, self.record_len)?;
        if nack.kind != Kind::Nack {
            return Err(Reject::Malformed);
        }
        if nack.node != from_node {
            return Err(Reject::NotPeer);
        }
        if nack.epoch != self.epoch {
            return Err(Reject::Stale);
        }
        self.stats.nacks_received += 1;
        // Sequence number of ring[0]; `last_seq + 1` when the ring is empty.
        let oldest = self.last_seq + 1 - self.ring.len() as u64;
        let mut resend = vec![false; self.ring.len()];
        let mut gone: Option<(u64, u64)> = None;
        for (first, last) in nack.ranges() {
            let last = last.min(self.last_seq);
            if first > last {
                continue;
            }
            if first < oldest {
                let gone_last = last.min(oldest - 1);
                gone = Some(match gone {
                    Some((f, l)) => (f.min(first), l.max(gone_last)),
                    None => (first, gone_last),
                });
            }
            if last >= oldest {
                // Both ends are within the ring: oldest <= from <= last <= last_seq.
                let from = first.max(oldest);
                for i in (from - oldest)..=(last - oldest) {
                    if let Some(flag) = resend.get_mut(i as usize) {
                        *flag = true;
                    }
                }
            }
        }
        let mut out: Vec<Vec<u8>> = self
            .ring
            .iter()
            .zip(&resend)
            .filter(|(_, wanted)| **wanted)
            .map(|(datagram, _)| datagram.clone())
            .collect();
        self.stats.datagrams_resent += out.len() as u64;
        if let Some((first, last)) = gone {
            let mut buf = wire::start(
                Kind::Gone,
                self.node,
                self.epoch,
                self.last_seq,
                1,
                RANGE_LEN,
            );
            wire::push_range(&mut buf, first, last);
            out.push(wire::seal(buf, &self.key));
            self.stats.gone_sent += 1;
            self.stats.sequences_gone += last - first + 1;
        }
        Ok(out)
    }
}
