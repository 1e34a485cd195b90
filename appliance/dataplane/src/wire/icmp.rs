//! ICMP (RFC 792) and ICMPv6 (RFC 4443): the common 8-byte header, and the
//! messages Rialto reads or writes.

use super::{Error, Layer, Result, checksum, set_word, word};

mod field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// The second word: an echo's identifier and sequence, an error's MTU.
    pub const REST: Range<usize> = 4..8;
}

/// Length of the header up to the message body.
pub const HEADER_LEN: usize = field::REST.end;

/// ICMP for IPv4 types and codes.
pub mod v4 {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// Destination unreachable: port unreachable.
    pub const PORT_UNREACHABLE: u8 = 3;
    /// Destination unreachable: fragmentation needed and DF set (RFC 1191).
    pub const FRAGMENTATION_NEEDED: u8 = 4;
    /// Time exceeded: TTL exceeded in transit.
    pub const TTL_EXCEEDED: u8 = 0;
    /// The most an ICMP error may take (RFC 1812 §4.3.2.3: 576 bytes in all).
    pub const MAX_ERROR_LEN: usize = 576;

    pub fn is_error(message_type: u8) -> bool {
        matches!(
            message_type,
            DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM
        )
    }
}

/// ICMPv6 types and codes.
pub mod v6 {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    /// Destination unreachable: port unreachable.
    pub const PORT_UNREACHABLE: u8 = 4;
    /// Time exceeded: hop limit exceeded in transit.
    pub const HOP_LIMIT_EXCEEDED: u8 = 0;
    /// The most an error message may take (RFC 4443 §2.4 (c): the minimum MTU).
    pub const MAX_ERROR_LEN: usize = 1280;

    pub fn is_error(message_type: u8) -> bool {
        message_type < 128
    }
}

/// A view of an ICMP or ICMPv6 message.
#[derive(Debug)]
pub struct Message<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Message<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// [`Self::new_unchecked`], then [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let message = Self::new_unchecked(buffer);
        message.check_len()?;
        Ok(message)
    }

    /// Whether the 8-byte header is there.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated(Layer::Icmp));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// # Panics
    /// Every accessor panics if its field lies beyond the buffer; after
    /// [`Self::check_len`], none does.
    pub fn message_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        word(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn rest(&self) -> [u8; 4] {
        self.buffer.as_ref()[field::REST]
            .try_into()
            .expect("4 bytes")
    }

    /// What follows the header: an error's quoted packet.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Whether the checksum over the message (and, for ICMPv6, the
    /// pseudo-header whose unfolded sum is `pseudo_header`) is right.
    pub fn verify_checksum(&self, pseudo_header: u64) -> bool {
        checksum::verifies(pseudo_header + checksum::sum(self.buffer.as_ref()))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Message<T> {
    /// Computes the checksum over the whole message, plus the pseudo-header
    /// whose unfolded sum is `pseudo_header` (ICMPv6; 0 for ICMP). Errors
    /// are small and rare: a full sum.
    pub fn fill_checksum(&mut self, pseudo_header: u64) {
        let buf = self.buffer.as_mut();
        buf[field::CHECKSUM].fill(0);
        let c = checksum::finish(pseudo_header + checksum::sum(buf));
        set_word(buf, field::CHECKSUM, c);
    }

    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The header of a fresh message; the checksum is filled in once the body
/// is in place ([`Message::fill_checksum`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub message_type: u8,
    pub code: u8,
    pub rest: [u8; 4],
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(message: &Message<T>) -> Result<Self> {
        message.check_len()?;
        Ok(Self {
            message_type: message.message_type(),
            code: message.code(),
            rest: message.rest(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::TYPE] = self.message_type;
        buf[field::CODE] = self.code;
        buf[field::CHECKSUM].fill(0);
        buf[field::REST].copy_from_slice(&self.rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fragmentation needed, MTU 1450, quoting two bytes; checksum filled.
    fn message() -> [u8; 10] {
        let mut m = [3, 4, 0, 0, 0, 0, 0x05, 0xaa, 0x45, 0x00];
        Message::new_unchecked(&mut m[..]).fill_checksum(0);
        m
    }

    fn repr() -> Repr {
        Repr {
            message_type: v4::DEST_UNREACHABLE,
            code: v4::FRAGMENTATION_NEEDED,
            rest: [0, 0, 0x05, 0xaa],
        }
    }

    #[test]
    fn deconstruct() {
        let bytes = message();
        let m = Message::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            (m.message_type(), m.code(), m.rest()),
            (3, 4, [0, 0, 0x05, 0xaa])
        );
        assert_eq!(m.body(), &[0x45, 0x00]);
        assert!(m.verify_checksum(0));
        assert!(v4::is_error(m.message_type()) && !v4::is_error(v4::ECHO_REQUEST));
        assert!(v6::is_error(v6::PACKET_TOO_BIG) && !v6::is_error(v6::ECHO_REPLY));
    }

    #[test]
    fn construct() {
        let mut bytes = message();
        let mut m = Message::new_checked(&mut bytes[..]).unwrap();
        m.body_mut().copy_from_slice(&[0x60, 0x00]);
        assert!(!m.verify_checksum(0));
        m.fill_checksum(0);
        assert!(m.verify_checksum(0));
        // etherparse, independently, agrees.
        let (header, _) = etherparse::Icmpv4Header::from_slice(&bytes).unwrap();
        let recomputed = etherparse::Icmpv4Header::with_checksum(header.icmp_type, &bytes[8..]);
        assert_eq!(
            recomputed.checksum,
            u16::from_be_bytes([bytes[2], bytes[3]])
        );
    }

    #[test]
    fn parse() {
        let bytes = message();
        assert_eq!(Repr::parse(&Message::new_unchecked(&bytes[..])), Ok(repr()));
        assert_eq!(
            Message::new_checked(&bytes[..7]).unwrap_err(),
            Error::Truncated(Layer::Icmp)
        );
    }

    #[test]
    fn emit() {
        let mut bytes = [0xa5; 10];
        repr().emit(&mut bytes);
        assert_eq!(bytes[..8], [3, 4, 0, 0, 0, 0, 0x05, 0xaa]);
        assert_eq!(bytes[8..], [0xa5; 2]);
    }
}
