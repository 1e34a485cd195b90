//! IPv4 (RFC 791). Options are skipped by the header length, never parsed.

use super::{Error, checksum, swap_ranges};

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    /// TTL and protocol share the 16-bit word the checksum sees.
    pub const TTL_PROTOCOL: Range<usize> = 8..10;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
    pub const MIN_HEADER_LEN: usize = 20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::MIN_HEADER_LEN;

const DONT_FRAGMENT: u16 = 0x4000;
const MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET: u16 = 0x1fff;

/// The fields of a fresh, option-less header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    pub ttl: u8,
    pub tos: u8,
    pub ident: u16,
    pub dont_fragment: bool,
    pub payload_len: usize,
}

impl Repr {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`,
    /// checksum included.
    pub fn emit(&self, buf: &mut [u8]) {
        let header = &mut buf[..HEADER_LEN];
        let total_len = (HEADER_LEN + self.payload_len) as u16;
        let flags = if self.dont_fragment { DONT_FRAGMENT } else { 0 };
        header[field::VER_IHL] = 0x45;
        header[field::TOS] = self.tos;
        header[field::TOTAL_LEN].copy_from_slice(&total_len.to_be_bytes());
        header[field::IDENT].copy_from_slice(&self.ident.to_be_bytes());
        header[field::FLAGS_FRAG].copy_from_slice(&flags.to_be_bytes());
        header[field::TTL] = self.ttl;
        header[field::PROTOCOL] = self.protocol;
        header[field::CHECKSUM].fill(0);
        header[field::SRC].copy_from_slice(&self.src);
        header[field::DST].copy_from_slice(&self.dst);
        let c = checksum::finish(checksum::sum(header));
        header[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// A view of an IPv4 packet.
#[derive(Debug)]
pub struct Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the version, and that the header and the total length fit the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let buf = buffer.as_ref();
        if buf.len() < field::MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = Self { buffer };
        let header_len = packet.header_len();
        if packet.version() != 4 || header_len < field::MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        let total_len = packet.total_len();
        if total_len < header_len {
            return Err(Error::Malformed);
        }
        if packet.buffer.as_ref().len() < total_len {
            return Err(Error::Truncated);
        }
        Ok(packet)
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn total_len(&self) -> usize {
        let b = &self.buffer.as_ref()[field::TOTAL_LEN];
        usize::from(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn ident(&self) -> u16 {
        self.word(field::IDENT.start)
    }

    pub fn dont_fragment(&self) -> bool {
        self.word(field::FLAGS_FRAG.start) & DONT_FRAGMENT != 0
    }

    /// A fragment, first or not (MF set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.word(field::FLAGS_FRAG.start) & (MORE_FRAGMENTS | FRAGMENT_OFFSET) != 0
    }

    /// A fragment other than the first: no transport header in it.
    pub fn is_later_fragment(&self) -> bool {
        self.word(field::FLAGS_FRAG.start) & FRAGMENT_OFFSET != 0
    }

    pub fn checksum(&self) -> u16 {
        self.word(field::CHECKSUM.start)
    }

    pub fn src(&self) -> [u8; 4] {
        self.buffer.as_ref()[field::SRC]
            .try_into()
            .expect("4 bytes")
    }

    pub fn dst(&self) -> [u8; 4] {
        self.buffer.as_ref()[field::DST]
            .try_into()
            .expect("4 bytes")
    }

    /// Whether the header checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::verifies(checksum::sum(&self.buffer.as_ref()[..self.header_len()]))
    }

    fn word(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Swaps source and destination; the header checksum stays valid.
    pub fn swap_addresses(&mut self) {
        swap_ranges(self.buffer.as_mut(), field::SRC, field::DST);
    }

    /// Rewrites the source, updating the header checksum (RFC 1624).
    pub fn set_src(&mut self, addr: [u8; 4]) {
        self.rewrite(field::SRC, &addr);
    }

    /// Rewrites the destination, updating the header checksum (RFC 1624).
    pub fn set_dst(&mut self, addr: [u8; 4]) {
        self.rewrite(field::DST, &addr);
    }

    /// Decrements the TTL, updating the header checksum. The caller checks
    /// first that the TTL is above one.
    pub fn decrement_ttl(&mut self) {
        let b = self.buffer.as_ref();
        let old = [b[field::TTL], b[field::PROTOCOL]];
        let new = [old[0].wrapping_sub(1), old[1]];
        self.rewrite(field::TTL_PROTOCOL, &new);
    }

    /// Writes `new` over the (16-bit aligned) `range` of the header and
    /// updates the checksum for it.
    fn rewrite(&mut self, range: std::ops::Range<usize>, new: &[u8]) {
        let buf = self.buffer.as_mut();
        let at = field::CHECKSUM.start;
        let c = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let c = checksum::update(c, &buf[range.clone()], new);
        buf[range].copy_from_slice(new);
        buf[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

impl<'a> Packet<&'a mut [u8]> {
    /// The payload, up to the total length (Ethernet padding excluded).
    pub fn into_payload(self) -> &'a mut [u8] {
        let range = self.header_len()..self.total_len();
        &mut self.buffer[range]
    }
}

impl<'a> Packet<&'a [u8]> {
    /// The payload, up to the total length (Ethernet padding excluded).
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[self.header_len()..self.total_len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 198.18.0.2 -> 198.18.100.1, UDP, one 4-byte option (IHL 6), 4 bytes of payload.
    static WITH_OPTION: [u8; 28] = [
        0x46, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, // ..checksum
        198, 18, 0, 2, 198, 18, 100, 1, // src, dst
        0x01, 0x01, 0x01, 0x00, // NOP NOP NOP EOL
        0xde, 0xad, 0xbe, 0xef,
    ];

    #[test]
    fn deconstruct_skips_options() {
        let mut bytes = WITH_OPTION;
        let packet = Packet::new_checked(&mut bytes[..]).unwrap();
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.protocol(), 17);
        assert_eq!(packet.into_payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        let mut bad_ihl = WITH_OPTION;
        bad_ihl[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&bad_ihl[..]).unwrap_err(),
            Error::Malformed
        );
        assert_eq!(
            Packet::new_checked(&WITH_OPTION[..27]).unwrap_err(),
            Error::Truncated
        );
        let mut v6 = WITH_OPTION;
        v6[0] = 0x65;
        assert_eq!(Packet::new_checked(&v6[..]).unwrap_err(), Error::Malformed);
    }

    #[test]
    fn rewrites_keep_the_checksum_right() {
        let mut bytes = WITH_OPTION;
        let c = checksum::finish(checksum::sum(&bytes[..24]));
        bytes[10..12].copy_from_slice(&c.to_be_bytes());
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        assert!(p.verify_checksum());
        p.set_src([198, 19, 0, 5]);
        p.set_dst([198, 18, 200, 1]);
        p.decrement_ttl();
        assert!(p.verify_checksum());
        assert_eq!(
            (p.src(), p.dst(), p.ttl()),
            ([198, 19, 0, 5], [198, 18, 200, 1], 63)
        );
        assert!(p.dont_fragment() && !p.is_fragment());
    }

    /// Emit into a buffer pre-filled with 0xa5, so a field left unwritten shows.
    #[test]
    fn emit() {
        let mut bytes = [0xa5; 24];
        let repr = Repr {
            src: [198, 18, 1, 1],
            dst: [198, 18, 2, 1],
            protocol: 17,
            ttl: 64,
            tos: 0,
            ident: 0x1234,
            dont_fragment: true,
            payload_len: 4,
        };
        repr.emit(&mut bytes);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(
            (p.total_len(), p.ident(), p.ttl(), p.protocol()),
            (24, 0x1234, 64, 17)
        );
        let parsed = etherparse::Ipv4HeaderSlice::from_slice(&bytes).unwrap();
        assert_eq!(parsed.header_checksum(), p.checksum());
        assert!(parsed.dont_fragment());
    }
}
