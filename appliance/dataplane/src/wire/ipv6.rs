//! IPv6 (RFC 8200): the fixed header, and a walk over the extension headers
//! to the upper-layer header.

use super::{Error, Layer, Result, checksum::Delta, set_word, swap_ranges, word};

mod field {
    use core::ops::Range;
    /// Version (4 bits), traffic class (8), flow label (20).
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
    /// Source and destination, contiguous.
    pub const ADDRESSES: Range<usize> = 8..40;

    /// An extension header's next header and length fields.
    pub const EXT_NEXT_HEADER: usize = 0;
    pub const EXT_LEN: usize = 1;
    /// The fragment header's offset and M flag (RFC 8200 §4.5).
    pub const FRAG_OFFSET: Range<usize> = 2..4;
    pub const FRAG_HEADER_LEN: usize = 8;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::DST.end;

/// Extension headers walked at most: RFC 8200 §4.1's recommended order has
/// at most one of each, plus a repeated destination options header; a
/// longer chain is malformed. The XDP program walks as far (its
/// `RIALTO_IPV6_EXT_MAX`), and a test proves both agree.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Extension header types (IANA "IPv6 Extension Header Types").
pub mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const DESTINATION: u8 = 60;
}

/// Where the upper-layer header is, once the extension headers are walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol (TCP, UDP, ICMPv6, ...).
    pub protocol: u8,
    /// Its offset from the start of the IPv6 header.
    pub offset: usize,
    /// Whether a Fragment header was crossed (RFC 8200 §4.5).
    pub fragment: bool,
    /// Whether it is a fragment other than the first: no upper-layer header in it.
    pub later_fragment: bool,
}

/// A view of an IPv6 packet.
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

    /// Whether the version is 6 and the fixed header is there: enough to
    /// read every field, as in the quote of an ICMPv6 error.
    pub fn check_header_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated(Layer::Ipv6));
        }
        if self.version() != 6 {
            return Err(Error::Malformed(Layer::Ipv6));
        }
        Ok(())
    }

    /// [`Self::check_header_len`], and the payload length fits the buffer.
    pub fn check_len(&self) -> Result<()> {
        self.check_header_len()?;
        if self.buffer.as_ref().len() < self.total_len() {
            return Err(Error::Truncated(Layer::Ipv6));
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
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        (b[0] << 4) | (b[1] >> 4)
    }

    pub fn flow_label(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([0, b[1] & 0x0f, b[2], b[3]])
    }

    pub fn payload_len(&self) -> usize {
        usize::from(word(self.buffer.as_ref(), field::PAYLOAD_LEN))
    }

    /// The whole packet's length: header and payload.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src(&self) -> [u8; 16] {
        self.buffer.as_ref()[field::SRC]
            .try_into()
            .expect("16 bytes")
    }

    pub fn dst(&self) -> [u8; 16] {
        self.buffer.as_ref()[field::DST]
            .try_into()
            .expect("16 bytes")
    }

    /// Walks hop-by-hop, routing, fragment, authentication and destination
    /// options headers, at most [`MAX_EXTENSION_HEADERS`] of them, to the
    /// upper-layer header. Each must lie inside the payload length. Needs
    /// [`Self::check_len`].
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        let buf = &self.buffer.as_ref()[..self.total_len()];
        let mut protocol = self.next_header();
        let mut offset = HEADER_LEN;
        let mut fragment = false;
        let mut later_fragment = false;
        for walked in 0..=MAX_EXTENSION_HEADERS {
            let header = buf.get(offset..).unwrap_or_default();
            let len = match protocol {
                ext::HOP_BY_HOP | ext::ROUTING | ext::DESTINATION => {
                    let len = header
                        .get(field::EXT_LEN)
                        .ok_or(Error::Truncated(Layer::Ipv6))?;
                    (usize::from(*len) + 1) * 8
                }
                ext::AUTHENTICATION => {
                    let len = header
                        .get(field::EXT_LEN)
                        .ok_or(Error::Truncated(Layer::Ipv6))?;
                    (usize::from(*len) + 2) * 4
                }
                ext::FRAGMENT => {
                    let offset = header
                        .get(field::FRAG_OFFSET)
                        .ok_or(Error::Truncated(Layer::Ipv6))?;
                    fragment = true;
                    later_fragment = u16::from_be_bytes([offset[0], offset[1]]) & 0xfff8 != 0;
                    field::FRAG_HEADER_LEN
                }
                _ => {
                    return Ok(UpperLayer {
                        protocol,
                        offset,
                        fragment,
                        later_fragment,
                    });
                }
            };
            if walked == MAX_EXTENSION_HEADERS {
                break;
            }
            if header.len() < len {
                return Err(Error::Truncated(Layer::Ipv6));
            }
            protocol = header[field::EXT_NEXT_HEADER];
            offset += len;
        }
        Err(Error::Malformed(Layer::Ipv6))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn swap_addresses(&mut self) {
        swap_ranges(self.buffer.as_mut(), field::SRC, field::DST);
    }

    /// Rewrites both addresses. IPv6 has no header checksum: the returned
    /// change is for the upper layer's pseudo-header.
    pub fn set_addresses(&mut self, src: [u8; 16], dst: [u8; 16]) -> Delta {
        let buf = self.buffer.as_mut();
        let mut delta = Delta::default();
        delta.add(&buf[field::SRC], &src);
        delta.add(&buf[field::DST], &dst);
        buf[field::SRC].copy_from_slice(&src);
        buf[field::DST].copy_from_slice(&dst);
        debug_assert_eq!(field::ADDRESSES, field::SRC.start..field::DST.end);
        delta
    }

    /// The caller checks first that the hop limit is above one.
    pub fn decrement_hop_limit(&mut self) {
        self.buffer.as_mut()[field::HOP_LIMIT] -= 1;
    }
}

impl<'a> Packet<&'a mut [u8]> {
    /// The payload, up to the payload length (Ethernet padding excluded).
    pub fn into_payload(self) -> &'a mut [u8] {
        let end = self.total_len();
        &mut self.buffer[HEADER_LEN..end]
    }
}

/// The fields of a fresh header without extension headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub next_header: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub payload_len: usize,
}

impl Repr {
    /// The fixed header's fields of a whole packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Self {
            src: packet.src(),
            dst: packet.dst(),
            next_header: packet.next_header(),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
            payload_len: packet.payload_len(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let header = &mut buf[..HEADER_LEN];
        let first =
            (6 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0xf_ffff);
        header[field::VER_TC_FLOW].copy_from_slice(&first.to_be_bytes());
        set_word(header, field::PAYLOAD_LEN, self.payload_len as u16);
        header[field::NEXT_HEADER] = self.next_header;
        header[field::HOP_LIMIT] = self.hop_limit;
        header[field::SRC].copy_from_slice(&self.src);
        header[field::DST].copy_from_slice(&self.dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const DST: [u8; 16] = [0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    /// Traffic class 0xb8, flow label 0x12345, UDP, hop limit 64.
    fn packet(next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x6b,
            0x81,
            0x23,
            0x45,
            0,
            payload.len() as u8,
            next_header,
            64,
        ];
        p.extend_from_slice(&SRC);
        p.extend_from_slice(&DST);
        p.extend_from_slice(payload);
        p
    }

    fn repr() -> Repr {
        Repr {
            src: SRC,
            dst: DST,
            next_header: 17,
            hop_limit: 64,
            traffic_class: 0xb8,
            flow_label: 0x12345,
            payload_len: 4,
        }
    }

    /// `count` destination options headers of 8 bytes, then UDP.
    fn with_destination_options(count: usize) -> Vec<u8> {
        let mut payload = Vec::new();
        for i in 0..count {
            let next = if i + 1 == count { 17 } else { ext::DESTINATION };
            payload.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
        payload.extend_from_slice(&[0; 8]);
        let first = if count == 0 { 17 } else { ext::DESTINATION };
        packet(first, &payload)
    }

    #[test]
    fn deconstruct() {
        let bytes = packet(17, &[1, 2, 3, 4]);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            (p.version(), p.traffic_class(), p.flow_label()),
            (6, 0xb8, 0x12345)
        );
        assert_eq!(
            (p.next_header(), p.payload_len(), p.hop_limit()),
            (17, 4, 64)
        );
        assert_eq!((p.src(), p.dst(), p.total_len()), (SRC, DST, 44));
    }

    #[test]
    fn construct() {
        let mut bytes = packet(17, &[1, 2, 3, 4]);
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        p.swap_addresses();
        p.decrement_hop_limit();
        assert_eq!((p.src(), p.dst(), p.hop_limit()), (DST, SRC, 63));
        let delta = p.set_addresses(SRC, DST);
        assert_eq!(p.into_payload(), &[1, 2, 3, 4]);
        assert_eq!(delta.apply(0x1234), 0x1234, "a swap back changes no sum");
    }

    #[test]
    fn parse() {
        let bytes = packet(17, &[1, 2, 3, 4]);
        assert_eq!(Repr::parse(&Packet::new_unchecked(&bytes[..])), Ok(repr()));
    }

    #[test]
    fn emit() {
        let mut bytes = [0xa5; 44];
        repr().emit(&mut bytes);
        assert_eq!(bytes[40..], [0xa5; 4]);
        let parsed = etherparse::Ipv6HeaderSlice::from_slice(&bytes).unwrap();
        assert_eq!(parsed.flow_label().value(), 0x12345);
        assert_eq!(parsed.traffic_class(), 0xb8);
        assert_eq!(
            (
                parsed.hop_limit(),
                parsed.next_header().0,
                parsed.payload_length()
            ),
            (64, 17, 4)
        );
    }

    #[test]
    fn payload_length_beyond_the_buffer() {
        let mut bytes = packet(17, &[1, 2, 3, 4]);
        bytes[5] = 5;
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap_err(),
            Error::Truncated(Layer::Ipv6)
        );
        assert_eq!(Packet::new_unchecked(&bytes[..]).check_header_len(), Ok(()));
    }

    #[test]
    fn walks_extension_headers() {
        // Hop-by-hop (8 bytes, PadN) then a first fragment, then UDP.
        let mut payload = vec![ext::FRAGMENT, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&[17, 0, 0x00, 0x01, 0, 0, 0, 7]);
        payload.extend_from_slice(&[0; 8]);
        let bytes = packet(ext::HOP_BY_HOP, &payload);
        let upper = Packet::new_checked(&bytes[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert_eq!(
            upper,
            UpperLayer {
                protocol: 17,
                offset: 56,
                fragment: true,
                later_fragment: false
            }
        );
    }

    /// Up to the limit a chain is walked; one more is malformed.
    #[test]
    fn the_walk_stops_at_its_limit() {
        for count in [0, 1, MAX_EXTENSION_HEADERS] {
            let bytes = with_destination_options(count);
            let upper = Packet::new_checked(&bytes[..]).unwrap().upper_layer();
            assert_eq!(
                upper.map(|u| (u.protocol, u.offset)),
                Ok((17, HEADER_LEN + 8 * count)),
                "{count} extension headers"
            );
        }
        let bytes = with_destination_options(MAX_EXTENSION_HEADERS + 1);
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap().upper_layer(),
            Err(Error::Malformed(Layer::Ipv6))
        );
    }

    #[test]
    fn later_fragment_and_truncated_chain() {
        let bytes = packet(ext::FRAGMENT, &[17, 0, 0x05, 0x00, 0, 0, 0, 7]);
        let upper = Packet::new_checked(&bytes[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert!(upper.later_fragment);
        let bytes = packet(ext::DESTINATION, &[17, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap().upper_layer(),
            Err(Error::Truncated(Layer::Ipv6))
        );
    }
}
