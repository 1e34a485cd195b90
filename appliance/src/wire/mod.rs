//! Typed, in-place views of the headers Rialto reads and rewrites.
//!
//! Each view wraps a buffer, checks its length once in `new_checked`, and
//! after that no accessor can panic. Views read and write the frame where it
//! lies in the UMEM: no header is copied out and back.

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vxlan;

/// Why a frame could not be viewed as a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the header (or than a length field inside it) says.
    Truncated,
    /// A field holds a value the header does not allow (a version, a length).
    Malformed,
}

/// Swaps the two equal-length byte ranges `a` and `b` of `buf` (`a` before `b`).
fn swap_ranges(buf: &mut [u8], a: std::ops::Range<usize>, b: std::ops::Range<usize>) {
    let (head, tail) = buf.split_at_mut(b.start);
    head[a].swap_with_slice(&mut tail[..b.end - b.start]);
}

/// UDP and TCP both begin with the source and then the destination port.
pub mod ports {
    /// Bytes a transport header must have for its ports to be read.
    pub const LEN: usize = 4;

    /// Swaps the source and destination ports of a UDP or TCP header.
    ///
    /// Checksum-neutral: the ones'-complement sum does not depend on order.
    pub fn swap(l4: &mut [u8]) -> Result<(), super::Error> {
        if l4.len() < LEN {
            return Err(super::Error::Truncated);
        }
        super::swap_ranges(l4, 0..2, 2..4);
        Ok(())
    }
}
