//! TCP (RFC 9293): the fields a load balancer reads.

use super::Error;

mod field {
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
}

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Offset of the checksum in the header.
pub const CHECKSUM_AT: usize = 16;

/// Control bits (RFC 9293 §3.1).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// A view of a TCP segment.
#[derive(Debug)]
pub struct Segment<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Segment<T> {
    /// Checks that the header, options included, is there.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let buf = buffer.as_ref();
        if buf.len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let segment = Self { buffer };
        let header_len = segment.header_len();
        if header_len < MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if header_len > segment.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(segment)
    }

    pub fn src_port(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn dst_port(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The control bits (CWR..FIN).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deconstruct() {
        let mut bytes = [0u8; 24];
        bytes[..4].copy_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
        bytes[12] = 6 << 4;
        bytes[13] = flags::SYN;
        let s = Segment::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            (s.src_port(), s.dst_port(), s.header_len(), s.flags()),
            (40000, 80, 24, flags::SYN)
        );
        assert_eq!(
            Segment::new_checked(&bytes[..23]).unwrap_err(),
            Error::Truncated
        );
        bytes[12] = 4 << 4;
        assert_eq!(
            Segment::new_checked(&bytes[..]).unwrap_err(),
            Error::Malformed
        );
    }
}
