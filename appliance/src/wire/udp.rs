//! UDP (RFC 768).

use super::Error;

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Length of the header.
pub const HEADER_LEN: usize = 8;
/// Offset of the checksum in the header.
pub const CHECKSUM_AT: usize = field::CHECKSUM.start;

/// A view of a UDP datagram.
#[derive(Debug)]
pub struct Datagram<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Datagram<T> {
    /// Checks that the header is there and the length field fits the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let buf = buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let datagram = Self { buffer };
        let len = datagram.length();
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len > datagram.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(datagram)
    }

    pub fn src_port(&self) -> u16 {
        self.word(field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        self.word(field::DST_PORT.start)
    }

    /// The length field: header and payload.
    pub fn length(&self) -> usize {
        usize::from(self.word(field::LENGTH.start))
    }

    /// Zero on IPv4 means "no checksum" (RFC 768).
    pub fn checksum(&self) -> u16 {
        self.word(field::CHECKSUM.start)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.length()]
    }

    fn word(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }
}

/// The fields of a fresh header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
    pub checksum: u16,
}

impl Repr {
    pub fn emit(&self, buf: &mut [u8]) {
        let header = &mut buf[..HEADER_LEN];
        header[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        header[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        let len = (HEADER_LEN + self.payload_len) as u16;
        header[field::LENGTH].copy_from_slice(&len.to_be_bytes());
        header[field::CHECKSUM].copy_from_slice(&self.checksum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DATAGRAM: [u8; 12] = [0x9c, 0x40, 0x00, 0x35, 0x00, 0x0c, 0x12, 0x34, 1, 2, 3, 4];

    #[test]
    fn deconstruct() {
        let d = Datagram::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(
            (d.src_port(), d.dst_port(), d.length(), d.checksum()),
            (40000, 53, 12, 0x1234)
        );
        assert_eq!(d.payload(), &[1, 2, 3, 4]);
    }

    #[test]
    fn bad_lengths() {
        assert_eq!(
            Datagram::new_checked(&DATAGRAM[..11]).unwrap_err(),
            Error::Truncated
        );
        let mut short = DATAGRAM;
        short[5] = 7;
        assert_eq!(
            Datagram::new_checked(&short[..]).unwrap_err(),
            Error::Malformed
        );
    }

    #[test]
    fn emit() {
        let mut bytes = [0xa5; 8];
        Repr {
            src_port: 40000,
            dst_port: 53,
            payload_len: 4,
            checksum: 0x1234,
        }
        .emit(&mut bytes);
        assert_eq!(bytes, DATAGRAM[..8]);
    }
}
