//! IPv4 (RFC 791). Options are skipped by the header length, never parsed.

use super::{
    Error, Layer, Result,
    checksum::{self, Delta},
    set_word, swap_ranges, word,
};

mod field {
    use core::ops::Range;
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
    /// Source and destination, contiguous.
    pub const ADDRESSES: Range<usize> = 12..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::DST.end;

const DONT_FRAGMENT: u16 = 0x4000;
const MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET: u16 = 0x1fff;

/// A view of an IPv4 packet.
#[derive(Debug)]
pub struct Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// [`Self::new_unchecked`], then [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Whether the version is 4 and the header, options included, is there:
    /// enough to read every field, as in the quote of an ICMP error, which
    /// may stop anywhere after the header.
    pub fn check_header_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated(Layer::Ipv4));
        }
        if self.version() != 4 || self.header_len() < HEADER_LEN {
            return Err(Error::Malformed(Layer::Ipv4));
        }
        if len < self.header_len() {
            return Err(Error::Truncated(Layer::Ipv4));
        }
        Ok(())
    }

    /// [`Self::check_header_len`], and the total length covers the header
    /// and fits the buffer: the whole packet is there.
    pub fn check_len(&self) -> Result<()> {
        self.check_header_len()?;
        let total_len = self.total_len();
        if total_len < self.header_len() {
            return Err(Error::Malformed(Layer::Ipv4));
        }
        if self.buffer.as_ref().len() < total_len {
            return Err(Error::Truncated(Layer::Ipv4));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// # Panics
    /// Every accessor panics if its field lies beyond the buffer; after
    /// [`Self::check_header_len`], none does.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn total_len(&self) -> usize {
        usize::from(word(self.buffer.as_ref(), field::TOTAL_LEN))
    }

    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    pub fn ident(&self) -> u16 {
        word(self.buffer.as_ref(), field::IDENT)
    }

    pub fn dont_fragment(&self) -> bool {
        word(self.buffer.as_ref(), field::FLAGS_FRAG) & DONT_FRAGMENT != 0
    }

    /// A fragment, first or not (MF set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        word(self.buffer.as_ref(), field::FLAGS_FRAG) & (MORE_FRAGMENTS | FRAGMENT_OFFSET) != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        word(self.buffer.as_ref(), field::CHECKSUM)
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
}

impl<'a> Packet<&'a [u8]> {
    /// The payload, up to the total length (Ethernet padding excluded).
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Swaps source and destination; the header checksum stays valid.
    pub fn swap_addresses(&mut self) {
        swap_ranges(self.buffer.as_mut(), field::SRC, field::DST);
    }

    /// Rewrites both addresses and updates the header checksum (RFC 1624).
    /// Returns the change, for the transport checksum's pseudo-header.
    pub fn set_addresses(&mut self, src: [u8; 4], dst: [u8; 4]) -> Delta {
        let mut new = [0; 8];
        new[..4].copy_from_slice(&src);
        new[4..].copy_from_slice(&dst);
        self.rewrite(field::ADDRESSES, &new)
    }

    /// Decrements the TTL, updating the header checksum. The caller checks
    /// first that the TTL is above one.
    pub fn decrement_ttl(&mut self) {
        let b = self.buffer.as_ref();
        let new = [b[field::TTL].wrapping_sub(1), b[field::PROTOCOL]];
        self.rewrite(field::TTL_PROTOCOL, &new);
    }

    /// Computes the header checksum afresh.
    pub fn fill_checksum(&mut self) {
        let len = self.header_len();
        let buf = self.buffer.as_mut();
        buf[field::CHECKSUM].fill(0);
        let c = checksum::finish(checksum::sum(&buf[..len]));
        set_word(buf, field::CHECKSUM, c);
    }

    /// Writes `new` over the (16-bit aligned) `range` of the header and
    /// updates the checksum for it; returns the change.
    fn rewrite(&mut self, range: core::ops::Range<usize>, new: &[u8]) -> Delta {
        let buf = self.buffer.as_mut();
        let mut delta = Delta::default();
        delta.add(&buf[range.clone()], new);
        let c = delta.apply(word(buf, field::CHECKSUM));
        buf[range].copy_from_slice(new);
        set_word(buf, field::CHECKSUM, c);
        delta
    }
}

impl<'a> Packet<&'a mut [u8]> {
    /// The payload, up to the total length (Ethernet padding excluded).
    pub fn into_payload(self) -> &'a mut [u8] {
        let range = self.header_len()..self.total_len();
        &mut self.buffer[range]
    }
}

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
    /// The fields of a whole packet (options, if any, are not kept).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Self {
            src: packet.src(),
            dst: packet.dst(),
            protocol: packet.protocol(),
            ttl: packet.ttl(),
            tos: packet.tos(),
            ident: packet.ident(),
            dont_fragment: packet.dont_fragment(),
            payload_len: packet.total_len() - packet.header_len(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`,
    /// checksum included.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let header = &mut buf[..HEADER_LEN];
        let flags = if self.dont_fragment { DONT_FRAGMENT } else { 0 };
        header[field::VER_IHL] = 0x45;
        header[field::TOS] = self.tos;
        set_word(
            header,
            field::TOTAL_LEN,
            (HEADER_LEN + self.payload_len) as u16,
        );
        set_word(header, field::IDENT, self.ident);
        set_word(header, field::FLAGS_FRAG, flags);
        header[field::TTL] = self.ttl;
        header[field::PROTOCOL] = self.protocol;
        header[field::SRC].copy_from_slice(&self.src);
        header[field::DST].copy_from_slice(&self.dst);
        Packet::new_unchecked(header).fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 198.18.0.2 -> 198.18.100.1, UDP, one 4-byte option (IHL 6), 4 bytes
    /// of payload; checksum 0x47a7.
    static WITH_OPTION: [u8; 28] = [
        0x46, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x40, 0x00, 0x40, 0x11, 0x47, 0xa7, // ..checksum
        198, 18, 0, 2, 198, 18, 100, 1, // src, dst
        0x01, 0x01, 0x01, 0x00, // NOP NOP NOP EOL
        0xde, 0xad, 0xbe, 0xef,
    ];

    fn repr() -> Repr {
        Repr {
            src: [198, 18, 0, 2],
            dst: [198, 18, 100, 1],
            protocol: 17,
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_fragment: true,
            payload_len: 4,
        }
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&WITH_OPTION[..]).unwrap();
        assert!(packet.verify_checksum(), "the fixture's checksum is right");
        assert_eq!(packet.checksum(), 0x47a7);
        assert_eq!((packet.version(), packet.header_len()), (4, 24));
        assert_eq!(
            (packet.total_len(), packet.ident(), packet.ttl()),
            (28, 1, 64)
        );
        assert_eq!((packet.protocol(), packet.tos()), (17, 0));
        assert!(packet.dont_fragment() && !packet.is_fragment());
        assert_eq!(
            (packet.src(), packet.dst()),
            ([198, 18, 0, 2], [198, 18, 100, 1])
        );
        assert_eq!(packet.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn construct() {
        let mut bytes = WITH_OPTION;
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        let delta = p.set_addresses([198, 19, 0, 5], [198, 18, 200, 1]);
        p.decrement_ttl();
        assert!(p.verify_checksum());
        assert_eq!(
            (p.src(), p.dst(), p.ttl()),
            ([198, 19, 0, 5], [198, 18, 200, 1], 63)
        );
        // The delta moves a pseudo-header sum from the old addresses to the new.
        let old = checksum::sum(&WITH_OPTION[12..20]);
        let new = checksum::sum(&bytes[12..20]);
        assert_eq!(
            delta.apply(checksum::finish(old)),
            checksum::finish(new),
            "the returned delta updates a checksum over the addresses"
        );
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        p.swap_addresses();
        assert!(p.verify_checksum());
        assert_eq!(p.into_payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn parse() {
        let packet = Packet::new_checked(&WITH_OPTION[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Ok(repr()));
    }

    #[test]
    fn emit() {
        let mut bytes = [0xa5; 24];
        let mut repr = repr();
        repr.ident = 0x1234;
        repr.emit(&mut bytes);
        assert_eq!(bytes[20..], [0xa5; 4], "nothing written past the header");
        let p = Packet::new_unchecked(&bytes[..]);
        assert!(p.verify_checksum());
        let parsed = etherparse::Ipv4HeaderSlice::from_slice(&bytes).unwrap();
        // etherparse computes the checksum itself: an independent value.
        assert_eq!(
            parsed.to_header().calc_header_checksum(),
            p.checksum(),
            "the checksum etherparse computes"
        );
        assert_eq!(
            (parsed.total_len(), parsed.identification(), parsed.ttl()),
            (24, 0x1234, 64)
        );
        assert!(parsed.dont_fragment());
        assert_eq!(Repr::parse(&Packet::new_unchecked(&bytes[..])), Ok(repr));
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        let mut bad_ihl = WITH_OPTION;
        bad_ihl[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&bad_ihl[..]).unwrap_err(),
            Error::Malformed(Layer::Ipv4)
        );
        assert_eq!(
            Packet::new_checked(&WITH_OPTION[..27]).unwrap_err(),
            Error::Truncated(Layer::Ipv4)
        );
        // A quote: the header whole, the rest cut.
        let quote = Packet::new_unchecked(&WITH_OPTION[..24]);
        assert_eq!(quote.check_header_len(), Ok(()));
        assert_eq!(
            Packet::new_unchecked(&WITH_OPTION[..23]).check_header_len(),
            Err(Error::Truncated(Layer::Ipv4))
        );
        let mut v6 = WITH_OPTION;
        v6[0] = 0x65;
        assert_eq!(
            Packet::new_checked(&v6[..]).unwrap_err(),
            Error::Malformed(Layer::Ipv4)
        );
        let mut short_total = WITH_OPTION;
        short_total[3] = 20;
        assert_eq!(
            Packet::new_checked(&short_total[..]).unwrap_err(),
            Error::Malformed(Layer::Ipv4)
        );
    }
}
