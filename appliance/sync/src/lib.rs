//! Flow sync: how the border nodes of a fleet replicate their
//! connection-tracking flows to each other over UDP.
//!
//! The crate is sans-I/O: it opens no socket, starts no thread and reads no
//! clock. The caller hands it the bytes of a datagram and the time, and gets
//! back records to apply and datagrams to send. Records are opaque byte
//! strings of a fixed length (`record_len`, chosen by the caller); the crate
//! never looks inside them.
//!
//! - [`Sender`]: one per node; queues the node's records, packs them into
//!   `Updates` datagrams, keeps the last few to answer NACKs.
//! - [`Receiver`]: one per node; accepts the datagrams of the configured
//!   [`Peer`]s, delivers each peer's records in sequence order, asks for what
//!   is missing, and says when a peer's table must be pulled again.
//! - [`wire`]: the datagram format.
//!
//! # Wire format
//!
//! Every datagram is a header, a body and a tag. Integers are big-endian.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      'R'      |      'S'      |      'Y'      |      'N'      |
//! +---------------+---------------+---------------+---------------+
//! |  version (1)  |     kind      |            node id            |
//! +---------------+---------------+-------------------------------+
//! |                         epoch (64 bits)                       |
//! |                                                               |
//! +---------------------------------------------------------------+
//! |                        sequence (64 bits)                     |
//! |                                                               |
//! +-------------------------------+-------------------------------+
//! |             count             |   body (kind-dependent) ...   |
//! +-------------------------------+-------------------------------+
//! |   ... body ...  |  tag: HMAC-SHA256(key, all bytes before it) |
//! +-----------------+---------------------------------------------+
//! ```
//!
//! The header is 26 bytes and the tag 32, so a datagram is at least 58
//! bytes. `version` is 1. The tag is HMAC-SHA256, keyed with the fleet's
//! shared [`Key`], over every byte before the tag; receivers compare it in
//! constant time. A datagram whose length disagrees with its `kind` and
//! `count` is malformed. The kinds:
//!
//! - `1` **Updates**, sender to receiver. `node id`, `epoch`: the sender's.
//!   `sequence`: this datagram's number, the next of the sender's sequence
//!   (the first of an epoch is 1). `count` ≥ 1 records of `record_len` bytes
//!   each make up the body.
//! - `2` **Heartbeat**, sender to receiver. `sequence`: the last sequence
//!   number the sender has used (0 if none), so that a receiver notices the
//!   loss of the last Updates. `count` = 0, no body.
//! - `3` **Nack**, receiver to sender. `node id`: the NACKer's. `epoch`: the
//!   epoch of the sender being asked. `sequence`: the last sequence number the
//!   NACKer has delivered in order (informational). `count` ≥ 1 ranges of
//!   missing sequence numbers, each `first` (u64) and `last` (u64),
//!   inclusive, `1 ≤ first ≤ last`.
//! - `4` **Gone**, sender to receiver, in answer to a Nack. `node id`,
//!   `epoch`: the sender's. `sequence`: the last sequence number the sender
//!   has used. `count` = 1 range, as in a Nack, of sequence numbers the sender
//!   no longer retains. The receiver gives up on everything up to the
//!   range's end and reports that the peer needs a resync.
//!
//! A datagram is at most `max_datagram` bytes (1400 by default); a sender
//! packs as many records into an Updates as fit.
//!
//! # Design
//!
//! **Sequence numbers per epoch.** Each Updates datagram takes the next
//! number of its sender, so a receiver knows exactly what it has missed,
//! and duplicates and replays are recognised by number. A process that
//! restarts cannot know where its previous incarnation stopped; rather than
//! persisting a counter, it draws a random 64-bit epoch at start and numbers
//! from 1 again. A receiver that sees a new epoch for a peer knows that the
//! peer restarted and resets that peer's sequence state; datagrams of an
//! epoch it has replaced are rejected as stale. The first datagram a
//! receiver gets from a peer starts that peer's sequence state where it is,
//! and asks the caller for a resync: what the peer sent before is unknown.
//!
//! **In-order delivery, bounded reorder buffer.** A flow's record may be
//! written many times; the last write must win. Delivering records in their
//! sender's order makes "apply in delivery order" correct without the crate
//! understanding records. Datagrams that arrive ahead of a gap wait in a
//! per-peer buffer of at most [`Limits::reorder`] datagrams; when it
//! overflows, or the gap cannot be repaired, the receiver gives up on the
//! gap, delivers what it holds past it and reports that the peer needs a
//! resync: the caller pulls the peer's whole table by other means and calls
//! [`Receiver::resynced`].
//!
//! **NACKs and a retained ring, not ACKs.** Loss is rare, so a receiver only
//! speaks when it misses something: it NACKs each gap at once, again every
//! [`Limits::nack_after`], at most [`Limits::nack_tries`] times. A sender
//! retains its last `retain` Updates datagrams verbatim to answer them and
//! answers `Gone` for older ones. A sender therefore keeps no per-receiver
//! state, and the fleet's traffic in the loss-free case is only Updates and
//! Heartbeats. Heartbeats carry the last sequence number, so a loss at the
//! tail is found within one heartbeat interval.
//!
//! **Bounded memory.** A sender holds its queue (what was pushed since the
//! last flush) and at most `retain` datagrams. A receiver holds, per peer,
//! at most `reorder` datagrams, at most `max_gaps` gap ranges (ranges, not
//! sets of numbers) and the last [`REPLACED_EPOCHS`] epochs it has replaced.
//! A sequence number more than [`Limits::max_ahead`] beyond what was
//! delivered is refused ([`Reject::TooFarAhead`]) rather than opening a gap
//! of that size. The answer to a Nack is at most `retain` datagrams and one
//! Gone.
//!
//! **What an attacker without the key can do.** Every datagram is
//! authenticated before any state changes, so forged, altered or truncated
//! datagrams, and datagrams from addresses that are not peers, are only
//! rejected and counted ([`Reject`]). Replayed Updates are recognised by
//! their sequence number and replayed datagrams of a replaced epoch by their
//! epoch. Replay is the only lever left, and a weak one: a replayed Heartbeat
//! can make a dead peer look alive for a while (it carries no new sequence
//! number); a replayed Nack makes a sender resend retained datagrams to the
//! genuine peer, which rejects them as replayed; and a datagram captured from
//! an epoch older than the last [`REPLACED_EPOCHS`] a receiver remembers is
//! taken as a restart of that peer. An attacker on the path can of course
//! drop datagrams, which the protocol turns into NACKs and, at worst, a
//! resync.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod key;
mod receiver;
mod reject;
mod sender;
pub mod wire;

#[cfg(test)]
mod tests;

pub use key::Key;
pub use receiver::{
    Delivery, Limits, Peer, PeerState, PeerStats, Polled, REPLACED_EPOCHS, Receiver,
};
pub use reject::{Reject, RejectCounts};
pub use sender::{Sender, SenderStats};

/// An error in the arguments given to a constructor or to [`Sender::push`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The shared key is shorter than [`Key::MIN_LEN`] bytes.
    #[error("the key is {0} bytes, at least {min} are needed", min = Key::MIN_LEN)]
    KeyTooShort(usize),
    /// The record length is 0.
    #[error("the record length must not be 0")]
    ZeroRecordLen,
    /// Not even one record (or one NACK range) fits in `max_datagram` bytes
    /// next to the header and the tag.
    #[error("a datagram of {max_datagram} bytes cannot hold one {item} of {item_len} bytes")]
    DatagramTooSmall {
        /// The configured maximum datagram size.
        max_datagram: usize,
        /// What does not fit: "record" or "range".
        item: &'static str,
        /// Its length in bytes.
        item_len: usize,
    },
    /// A record given to [`Sender::push`] is not `record_len` bytes long.
    #[error("a record is {got} bytes, expected {expected}")]
    RecordLen {
        /// The configured record length.
        expected: usize,
        /// The length of the record given.
        got: usize,
    },
    /// Two configured peers have the same node id or the same address.
    #[error("peer {0} is configured twice (same node id or same address)")]
    DuplicatePeer(u16),
    /// A configured peer has the receiver's own node id.
    #[error("peer {0} has this node's own id")]
    SelfPeer(u16),
    /// A limit is zero where it must be positive.
    #[error("limit `{0}` must be positive")]
    ZeroLimit(&'static str),
}
