//! IPv6 (RFC 8200): the fixed header, and a walk over the extension headers
//! to the upper-layer header.

use super::{Error, swap_ranges};

mod field {
    use std::ops::Range;
    pub const VERSION: usize = 0;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
    pub const HEADER_LEN: usize = 40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::HEADER_LEN;

/// Extension headers walked before giving up (RFC 8200 §4.1 recommends an
/// order with at most one of each, plus a repeated destination options).
const MAX_EXTENSION_HEADERS: usize = 8;

/// Extension header types (IANA "IPv6 Extension Header Types").
mod ext {
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
    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        let header = &mut buf[..HEADER_LEN];
        let first =
            (6 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0xf_ffff);
        header[0..4].copy_from_slice(&first.to_be_bytes());
        header[field::PAYLOAD_LEN].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
        header[field::NEXT_HEADER] = self.next_header;
        header[field::HOP_LIMIT] = self.hop_limit;
        header[field::SRC].copy_from_slice(&self.src);
        header[field::DST].copy_from_slice(&self.dst);
    }
}

/// A view of an IPv6 packet.
#[derive(Debug)]
pub struct Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the version, and that the payload length fits the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let buf = buffer.as_ref();
        if buf.len() < field::HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = Self { buffer };
        if packet.buffer.as_ref()[field::VERSION] >> 4 != 6 {
            return Err(Error::Malformed);
        }
        if packet.buffer.as_ref().len() < field::HEADER_LEN + packet.payload_len() {
            return Err(Error::Truncated);
        }
        Ok(packet)
    }

    pub fn payload_len(&self) -> usize {
        let b = &self.buffer.as_ref()[field::PAYLOAD_LEN];
        usize::from(u16::from_be_bytes([b[0], b[1]]))
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

    pub fn traffic_class(&self) -> u8 {
        let b = self.buffer.as_ref();
        (b[0] << 4) | (b[1] >> 4)
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
    /// options headers to the upper-layer header. Each must lie inside the
    /// payload length.
    pub fn upper_layer(&self) -> Result<UpperLayer, Error> {
        let buf = &self.buffer.as_ref()[..self.total_len()];
        let mut protocol = self.next_header();
        let mut offset = HEADER_LEN;
        let mut fragment = false;
        let mut later_fragment = false;
        for _ in 0..MAX_EXTENSION_HEADERS {
            let len = match protocol {
                ext::HOP_BY_HOP | ext::ROUTING | ext::DESTINATION => {
                    let b = buf.get(offset..offset + 2).ok_or(Error::Truncated)?;
                    (usize::from(b[1]) + 1) * 8
                }
                ext::AUTHENTICATION => {
                    let b = buf.get(offset..offset + 2).ok_or(Error::Truncated)?;
                    (usize::from(b[1]) + 2) * 4
                }
                ext::FRAGMENT => {
                    let b = buf.get(offset..offset + 8).ok_or(Error::Truncated)?;
                    fragment = true;
                    later_fragment = u16::from_be_bytes([b[2], b[3]]) & 0xfff8 != 0;
                    8
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
            if offset + len > buf.len() {
                return Err(Error::Truncated);
            }
            protocol = buf[offset];
            offset += len;
        }
        Err(Error::Malformed)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn swap_addresses(&mut self) {
        swap_ranges(self.buffer.as_mut(), field::SRC, field::DST);
    }

    /// IPv6 has no header checksum: the upper layer's covers the addresses.
    pub fn set_src(&mut self, addr: [u8; 16]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr);
    }

    pub fn set_dst(&mut self, addr: [u8; 16]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr);
    }

    /// The caller checks first that the hop limit is above one.
    pub fn decrement_hop_limit(&mut self) {
        self.buffer.as_mut()[field::HOP_LIMIT] -= 1;
    }
}

impl<'a> Packet<&'a mut [u8]> {
    /// The payload, up to the payload length (Ethernet padding excluded).
    pub fn into_payload(self) -> &'a mut [u8] {
        let end = field::HEADER_LEN + self.payload_len();
        &mut self.buffer[field::HEADER_LEN..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, payload.len() as u8, next_header, 64];
        p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(&[0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn deconstruct_and_swap() {
        let mut bytes = packet(17, &[1, 2, 3, 4]);
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        assert_eq!((p.next_header(), p.payload_len()), (17, 4));
        p.swap_addresses();
        assert_eq!(p.into_payload(), &[1, 2, 3, 4]);
        assert_eq!(bytes[8 + 15], 1);
        assert_eq!(bytes[24 + 2], 0);
    }

    #[test]
    fn payload_length_beyond_the_buffer() {
        let mut bytes = packet(17, &[1, 2, 3, 4]);
        bytes[5] = 5;
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap_err(),
            Error::Truncated
        );
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
            Err(Error::Truncated)
        );
    }

    #[test]
    fn emit() {
        let mut bytes = [0xa5; 40];
        Repr {
            src: [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst: [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            next_header: 17,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0x12345,
            payload_len: 0,
        }
        .emit(&mut bytes);
        let parsed = etherparse::Ipv6HeaderSlice::from_slice(&bytes).unwrap();
        assert_eq!(parsed.flow_label().value(), 0x12345);
        assert_eq!(
            (
                parsed.hop_limit(),
                parsed.next_header().0,
                parsed.payload_length()
            ),
            (64, 17, 0)
        );
    }
}
