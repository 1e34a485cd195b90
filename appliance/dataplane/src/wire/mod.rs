//! Typed, in-place views of the headers Rialto reads and rewrites, after
//! smoltcp's `wire` module.
//!
//! Each header has its file, and in it:
//! - a `field` module of byte ranges: the only place its layout is written;
//! - a view over a buffer (`Packet`, `Frame`, `Datagram`, `Segment`,
//!   `Message`): `new_unchecked` wraps any buffer, `check_len` says whether
//!   the header is whole, `new_checked` does both. After `new_checked` no
//!   accessor panics; after `new_unchecked` an accessor panics only if its
//!   field lies beyond the buffer (each says so under `# Panics`), which is
//!   how a header cut short (the quote inside an ICMP error) is read;
//! - setters that keep the header's own checksum right, and return what the
//!   upper layer's checksum must learn (a [`checksum::Delta`]);
//! - a `Repr`: the fields of a fresh header, with `parse`, `buffer_len` and
//!   `emit`;
//! - smoltcp's four tests: deconstruct, construct, parse, emit (emit into a
//!   buffer pre-filled with `0xa5`, so a field left unwritten shows).
//!
//! Views read and write the frame where it lies in the UMEM: no header is
//! copied out and back.

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod ports;
pub mod tcp;
pub mod udp;
pub mod vxlan;

/// The header a view is of: what a malformed frame is malformed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    Ethernet,
    Ipv4,
    Ipv6,
    Tcp,
    Udp,
    Icmp,
    Vxlan,
}

/// Why a buffer could not be viewed as a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the header (or than a length field inside it) says.
    Truncated(Layer),
    /// A field holds a value the header does not allow (a version, a length).
    Malformed(Layer),
}

impl Error {
    /// The header at fault.
    pub const fn layer(self) -> Layer {
        match self {
            Self::Truncated(layer) | Self::Malformed(layer) => layer,
        }
    }
}

/// A view's result.
pub type Result<T> = core::result::Result<T, Error>;

/// Swaps the two equal-length byte ranges `a` and `b` of `buf` (`a` before `b`).
fn swap_ranges(buf: &mut [u8], a: core::ops::Range<usize>, b: core::ops::Range<usize>) {
    let (head, tail) = buf.split_at_mut(b.start);
    head[a].swap_with_slice(&mut tail[..b.end - b.start]);
}

/// The big-endian 16-bit word at `range` of `buf`.
fn word(buf: &[u8], range: core::ops::Range<usize>) -> u16 {
    u16::from_be_bytes([buf[range.start], buf[range.start + 1]])
}

fn set_word(buf: &mut [u8], range: core::ops::Range<usize>, value: u16) {
    buf[range].copy_from_slice(&value.to_be_bytes());
}
