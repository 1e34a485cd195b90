//! Ethernet II, with at most one 802.1Q / 802.1ad tag.

use super::{Error, swap_ranges};

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const HEADER_LEN: usize = 14;
    /// With a tag, the inner ethertype follows the 2-byte TCI.
    pub const TAGGED_ETHERTYPE: Range<usize> = 16..18;
    pub const TAGGED_HEADER_LEN: usize = 18;
}

/// Ethertypes Rialto tells apart.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const IPV6: u16 = 0x86dd;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
}

/// A view of an Ethernet frame.
#[derive(Debug)]
pub struct Frame<T> {
    buffer: T,
    tagged: bool,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Checks that the whole header (tag included) is there.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let buf = buffer.as_ref();
        if buf.len() < field::HEADER_LEN {
            return Err(Error::Truncated);
        }
        let outer = u16::from_be_bytes([buf[12], buf[13]]);
        let tagged = matches!(outer, ethertype::VLAN | ethertype::QINQ);
        if tagged && buf.len() < field::TAGGED_HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer, tagged })
    }

    /// The ethertype of the payload (after the tag, if any).
    pub fn ethertype(&self) -> u16 {
        let range = if self.tagged {
            field::TAGGED_ETHERTYPE
        } else {
            field::ETHERTYPE
        };
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn header_len(&self) -> usize {
        if self.tagged {
            field::TAGGED_HEADER_LEN
        } else {
            field::HEADER_LEN
        }
    }

    pub fn dst(&self) -> [u8; 6] {
        self.buffer.as_ref()[field::DST]
            .try_into()
            .expect("6 bytes")
    }

    pub fn src(&self) -> [u8; 6] {
        self.buffer.as_ref()[field::SRC]
            .try_into()
            .expect("6 bytes")
    }

    /// The 802.1Q / 802.1ad tag (TPID and TCI), if any.
    pub fn tag(&self) -> Option<[u8; 4]> {
        self.tagged
            .then(|| self.buffer.as_ref()[12..16].try_into().expect("4 bytes"))
    }
}

/// The length of a header with or without a tag.
pub fn header_len(tag: Option<[u8; 4]>) -> usize {
    if tag.is_some() {
        field::TAGGED_HEADER_LEN
    } else {
        field::HEADER_LEN
    }
}

/// Writes a header (with `tag` if given) at the start of `buf`; returns its length.
pub fn emit(
    buf: &mut [u8],
    dst: [u8; 6],
    src: [u8; 6],
    tag: Option<[u8; 4]>,
    ethertype: u16,
) -> usize {
    buf[field::DST].copy_from_slice(&dst);
    buf[field::SRC].copy_from_slice(&src);
    let at = match tag {
        Some(tag) => {
            buf[12..16].copy_from_slice(&tag);
            16
        }
        None => 12,
    };
    buf[at..at + 2].copy_from_slice(&ethertype.to_be_bytes());
    at + 2
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn swap_addresses(&mut self) {
        swap_ranges(self.buffer.as_mut(), field::DST, field::SRC);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static TAGGED: [u8; 20] = [
        0x02, 0, 0, 0, 0, 0x01, // dst
        0x02, 0, 0, 0, 0, 0x02, // src
        0x81, 0x00, 0x00, 0x2a, // 802.1Q, VLAN 42
        0x08, 0x00, // IPv4
        0xaa, 0xbb, // payload
    ];

    #[test]
    fn deconstruct_tagged() {
        let frame = Frame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(frame.ethertype(), ethertype::IPV4);
        assert_eq!(frame.header_len(), 18);
        assert_eq!(frame.dst(), [0x02, 0, 0, 0, 0, 0x01]);
        assert_eq!(frame.src(), [0x02, 0, 0, 0, 0, 0x02]);
    }

    #[test]
    fn swap_leaves_the_rest() {
        let mut bytes = TAGGED;
        let mut frame = Frame::new_checked(&mut bytes[..]).unwrap();
        frame.swap_addresses();
        assert_eq!(frame.payload_mut(), &[0xaa, 0xbb]);
        assert_eq!(&bytes[..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        assert_eq!(&bytes[12..], &TAGGED[12..]);
    }

    #[test]
    fn emit_tagged() {
        let mut bytes = [0xa5; 20];
        let tag = Frame::new_checked(&TAGGED[..]).unwrap().tag();
        let len = emit(
            &mut bytes,
            [0x02, 0, 0, 0, 0, 0x01],
            [0x02, 0, 0, 0, 0, 0x02],
            tag,
            ethertype::IPV4,
        );
        assert_eq!((len, header_len(tag)), (18, 18));
        assert_eq!(bytes[..18], TAGGED[..18]);
    }

    #[test]
    fn truncated_tag() {
        assert_eq!(
            Frame::new_checked(&TAGGED[..16]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Frame::new_checked(&TAGGED[..13]).unwrap_err(),
            Error::Truncated
        );
    }
}
