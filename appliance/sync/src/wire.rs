//! The datagram format (see the [crate documentation](crate#wire-format)).
//!
//! Everything here is about bytes; what the fields mean to the protocol is
//! in [`Sender`](crate::Sender) and [`Receiver`](crate::Receiver).

use crate::{Key, Reject};

/// The first four bytes of every datagram.
pub const MAGIC: [u8; 4] = *b"RSYN";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the header: magic, version, kind, node id, epoch, sequence,
/// count.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 2 + 8 + 8 + 2;
/// Length of the HMAC-SHA256 tag that ends every datagram.
pub const TAG_LEN: usize = 32;
/// Bytes of every datagram that are not body.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Length of a range of sequence numbers in a Nack or Gone body.
pub const RANGE_LEN: usize = 16;
/// The default maximum size of a datagram, which fits a 1500-byte MTU with
/// room for IP, UDP and a tunnel header.
pub const DEFAULT_MAX_DATAGRAM: usize = 1400;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Records, sender to receiver.
    Updates = 1,
    /// The sender's last sequence number, sender to receiver.
    Heartbeat = 2,
    /// Ranges of missing sequence numbers, receiver to sender.
    Nack = 3,
    /// A range the sender no longer retains, sender to receiver.
    Gone = 4,
}

impl Kind {
    /// The kind with this code, if any.
    pub fn from_u8(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Updates),
            2 => Some(Kind::Heartbeat),
            3 => Some(Kind::Nack),
            4 => Some(Kind::Gone),
            _ => None,
        }
    }
}

/// The kind of a datagram, read without authenticating it, so that a caller
/// with one socket can hand Nacks to its [`Sender`](crate::Sender) and
/// everything else to its [`Receiver`](crate::Receiver). `None` if the
/// bytes do not start like a datagram of this version.
pub fn peek_kind(bytes: &[u8]) -> Option<Kind> {
    if bytes.len() < OVERHEAD || bytes[..4] != MAGIC || bytes[4] != VERSION {
        return None;
    }
    Kind::from_u8(bytes[5])
}

/// A datagram that has passed [`open`]: well-formed and authenticated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Datagram<'a> {
    pub kind: Kind,
    pub node: u16,
    pub epoch: u64,
    pub seq: u64,
    pub count: u16,
    pub body: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// The ranges of a Nack or Gone body, validated by [`open`].
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + 'a {
        self.body
            .chunks_exact(RANGE_LEN)
            .map(|r| (be64(&r[..8]), be64(&r[8..])))
    }
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Checks the structure of `bytes` and then its tag. `record_len` is the
/// length of the records of an Updates.
pub(crate) fn open<'a>(
    bytes: &'a [u8],
    key: &Key,
    record_len: usize,
) -> Result<Datagram<'a>, Reject> {
    if bytes.len() < OVERHEAD || bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err(Reject::Malformed);
    }
    let kind = Kind::from_u8(bytes[5]).ok_or(Reject::Malformed)?;
    let node = u16::from_be_bytes([bytes[6], bytes[7]]);
    let epoch = be64(&bytes[8..16]);
    let seq = be64(&bytes[16..24]);
    let count = u16::from_be_bytes([bytes[24], bytes[25]]);
    let (signed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    let body = &signed[HEADER_LEN..];
    let n = usize::from(count);
    let well_formed = match kind {
        Kind::Updates => n >= 1 && Some(body.len()) == n.checked_mul(record_len),
        Kind::Heartbeat => n == 0 && body.is_empty(),
        Kind::Nack => n >= 1 && body.len() == n * RANGE_LEN,
        Kind::Gone => n == 1 && body.len() == RANGE_LEN,
    };
    if !well_formed {
        return Err(Reject::Malformed);
    }
    if !key.verify(signed, tag) {
        return Err(Reject::BadMac);
    }
    let datagram = Datagram {
        kind,
        node,
        epoch,
        seq,
        count,
        body,
    };
    if matches!(kind, Kind::Nack | Kind::Gone)
        && datagram
            .ranges()
            .any(|(first, last)| first == 0 || first > last)
    {
        return Err(Reject::Malformed);
    }
    Ok(datagram)
}

/// A buffer holding the header of a datagram, `body_len` bytes reserved for
/// the body that the caller appends, and room for the tag.
pub(crate) fn start(
    kind: Kind,
    node: u16,
    epoch: u64,
    seq: u64,
    count: u16,
    body_len: usize,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(OVERHEAD + body_len);
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    buf.push(kind as u8);
    buf.extend_from_slice(&node.to_be_bytes());
    buf.extend_from_slice(&epoch.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&count.to_be_bytes());
    buf
}

/// Appends a range to a Nack or Gone body.
pub(crate) fn push_range(buf: &mut Vec<u8>, first: u64, last: u64) {
    buf.extend_from_slice(&first.to_be_bytes());
    buf.extend_from_slice(&last.to_be_bytes());
}

/// Appends the tag of everything in `buf`.
pub(crate) fn seal(mut buf: Vec<u8>, key: &Key) -> Vec<u8> {
    let tag = key.tag(&buf);
    buf.extend_from_slice(&tag);
    buf
}
