//! IPv6 (RFC 8200): the fixed header. Extension headers come with the pipeline.

use super::{Error, swap_ranges};

mod field {
    use std::ops::Range;
    pub const VERSION: usize = 0;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
    pub const HEADER_LEN: usize = 40;
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

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn swap_addresses(&mut self) {
        swap_ranges(self.buffer.as_mut(), field::SRC, field::DST);
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

    fn packet(payload_len: u8) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, payload_len, 17, 64];
        p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(&[0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[1, 2, 3, 4]);
        p
    }

    #[test]
    fn deconstruct_and_swap() {
        let mut bytes = packet(4);
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        assert_eq!((p.next_header(), p.payload_len()), (17, 4));
        p.swap_addresses();
        assert_eq!(p.into_payload(), &[1, 2, 3, 4]);
        assert_eq!(bytes[8 + 15], 1);
        assert_eq!(bytes[24 + 2], 0);
    }

    #[test]
    fn payload_length_beyond_the_buffer() {
        assert_eq!(
            Packet::new_checked(&packet(5)[..]).unwrap_err(),
            Error::Truncated
        );
    }
}
