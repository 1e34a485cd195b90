//! IPv4 (RFC 791). Options are skipped by the header length, never parsed.

use super::{Error, swap_ranges};

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const PROTOCOL: usize = 9;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
    pub const MIN_HEADER_LEN: usize = 20;
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
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Swaps source and destination; the header checksum stays valid.
    pub fn swap_addresses(&mut self) {
        swap_ranges(self.buffer.as_mut(), field::SRC, field::DST);
    }
}

impl<'a> Packet<&'a mut [u8]> {
    /// The payload, up to the total length (Ethernet padding excluded).
    pub fn into_payload(self) -> &'a mut [u8] {
        let range = self.header_len()..self.total_len();
        &mut self.buffer[range]
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
}
