//! ICMP (RFC 792) and ICMPv6 (RFC 4443): the common 8-byte header, and the
//! messages Rialto reads or writes.

use super::Error;

/// Length of the header up to the message body.
pub const HEADER_LEN: usize = 8;
/// Offset of the checksum in the header.
pub const CHECKSUM_AT: usize = 2;

/// ICMP for IPv4 types and codes.
pub mod v4 {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
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
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    pub fn message_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// The second word: the echo identifier, or an error's MTU field.
    pub fn rest(&self) -> [u8; 4] {
        self.buffer.as_ref()[4..8].try_into().expect("4 bytes")
    }

    /// What follows the header: an error's quoted packet.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// The header of a fresh message; the checksum is filled in by the caller
/// once the body is in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub message_type: u8,
    pub code: u8,
    pub rest: [u8; 4],
}

impl Repr {
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.message_type;
        buf[1] = self.code;
        buf[2..4].fill(0);
        buf[4..8].copy_from_slice(&self.rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deconstruct_and_emit() {
        let mut bytes = [0xa5; 10];
        Repr {
            message_type: v4::DEST_UNREACHABLE,
            code: v4::FRAGMENTATION_NEEDED,
            rest: [0, 0, 0x05, 0xaa],
        }
        .emit(&mut bytes);
        let m = Message::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            (m.message_type(), m.code(), m.rest()),
            (3, 4, [0, 0, 0x05, 0xaa])
        );
        assert_eq!(m.body(), &[0xa5, 0xa5]);
        assert!(v4::is_error(m.message_type()) && !v4::is_error(v4::ECHO_REQUEST));
        assert!(v6::is_error(v6::PACKET_TOO_BIG) && !v6::is_error(v6::ECHO_REPLY));
        assert_eq!(
            Message::new_checked(&bytes[..7]).unwrap_err(),
            Error::Truncated
        );
    }
}
