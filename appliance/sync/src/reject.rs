//! Why a datagram was refused, and counters of it.

/// Why a datagram was refused. Nothing in the receiver's or the sender's
/// state changes for a refused datagram, except counters and where said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    /// The source address is not a configured peer, or the datagram's node
    /// id is not that of the peer at its source address.
    #[error("not from a configured peer")]
    NotPeer,
    /// Not a datagram of this protocol, or not one this side accepts: too
    /// short, bad magic, wrong version, unknown kind (or a kind meant for the
    /// other side), count inconsistent with the length, records of the wrong
    /// length, sequence number 0 in an Updates, an empty or reversed range.
    #[error("malformed datagram")]
    Malformed,
    /// The authentication tag is wrong: not sent with the fleet's key, or
    /// altered on the way.
    #[error("bad authentication tag")]
    BadMac,
    /// An Updates whose sequence number was already delivered, given up on,
    /// or is already buffered: a duplicate or a replay.
    #[error("sequence number already seen")]
    Replayed,
    /// A datagram of an epoch that has been replaced by a newer one (the
    /// peer restarted since), or, at a sender, a Nack for another epoch than
    /// the sender's own.
    #[error("datagram of a replaced epoch")]
    Stale,
    /// A sequence number more than [`Limits::max_ahead`](crate::Limits::max_ahead)
    /// beyond the last one delivered. The datagram is dropped, the peer's
    /// sequence state restarts after it and the peer needs a resync.
    #[error("sequence number too far ahead")]
    TooFarAhead,
}

impl Reject {
    /// Every reason, in the order of their indices in [`RejectCounts`].
    pub const ALL: [Reject; 6] = [
        Reject::NotPeer,
        Reject::Malformed,
        Reject::BadMac,
        Reject::Replayed,
        Reject::Stale,
        Reject::TooFarAhead,
    ];

    /// A snake_case label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::NotPeer => "not_peer",
            Reject::Malformed => "malformed",
            Reject::BadMac => "bad_mac",
            Reject::Replayed => "replayed",
            Reject::Stale => "stale",
            Reject::TooFarAhead => "too_far_ahead",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of refused datagrams, one per [`Reject`] reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectCounts([u64; 6]);

impl RejectCounts {
    /// How many datagrams were refused for `reason`.
    pub fn get(&self, reason: Reject) -> u64 {
        self.0[reason.index()]
    }

    /// All refused datagrams, whatever the reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Each reason with its count, in the order of [`Reject::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (Reject, u64)> + '_ {
        Reject::ALL.iter().map(|&r| (r, self.get(r)))
    }

    pub(crate) fn count(&mut self, reason: Reject) {
        self.0[reason.index()] += 1;
    }
}
