//! Ethernet II, with at most one 802.1Q / 802.1ad tag.

use super::{Error, Layer, Result, swap_ranges, word};

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    /// With a tag, the TPID sits where the ethertype would be, then the TCI,
    /// then the payload's ethertype.
    pub const TAG: Range<usize> = 12..16;
    pub const TAGGED_ETHERTYPE: Range<usize> = 16..18;
}

/// Length of an untagged header.
pub const HEADER_LEN: usize = field::ETHERTYPE.end;
/// Length of a header with one tag.
pub const TAGGED_HEADER_LEN: usize = field::TAGGED_ETHERTYPE.end;

/// Ethertypes Rialto tells apart.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const IPV6: u16 = 0x86dd;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
}

/// An 802.1Q / 802.1ad tag as it is on the wire: TPID then TCI.
pub type Tag = [u8; 4];

/// A view of an Ethernet frame.
#[derive(Debug)]
pub struct Frame<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// [`Self::new_unchecked`], then [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Whether the whole header, tag included, is there.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < self.header_len() {
            return Err(Error::Truncated(Layer::Ethernet));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Whether a tag follows the source address.
    ///
    /// # Panics
    /// If the buffer is shorter than an untagged header.
    pub fn is_tagged(&self) -> bool {
        matches!(
            word(self.buffer.as_ref(), field::ETHERTYPE),
            ethertype::VLAN | ethertype::QINQ
        )
    }

    pub fn header_len(&self) -> usize {
        if self.buffer.as_ref().len() >= HEADER_LEN && self.is_tagged() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// The ethertype of the payload (after the tag, if any).
    pub fn ethertype(&self) -> u16 {
        let range = if self.is_tagged() {
            field::TAGGED_ETHERTYPE
        } else {
            field::ETHERTYPE
        };
        word(self.buffer.as_ref(), range)
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

    /// The 802.1Q / 802.1ad tag, if any.
    pub fn tag(&self) -> Option<Tag> {
        self.is_tagged().then(|| {
            self.buffer.as_ref()[field::TAG]
                .try_into()
                .expect("4 bytes")
        })
    }

    /// What follows the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac);
    }

    pub fn set_src(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac);
    }

    pub fn swap_addresses(&mut self) {
        swap_ranges(self.buffer.as_mut(), field::DST, field::SRC);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

/// The fields of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub tag: Option<Tag>,
    pub ethertype: u16,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Self> {
        frame.check_len()?;
        Ok(Self {
            dst: frame.dst(),
            src: frame.src(),
            tag: frame.tag(),
            ethertype: frame.ethertype(),
        })
    }

    /// The header's length: with or without the tag.
    pub const fn buffer_len(&self) -> usize {
        header_len(self.tag)
    }

    /// Writes the header at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`Self::buffer_len`].
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::DST].copy_from_slice(&self.dst);
        buf[field::SRC].copy_from_slice(&self.src);
        let ethertype = match self.tag {
            Some(tag) => {
                buf[field::TAG].copy_from_slice(&tag);
                field::TAGGED_ETHERTYPE
            }
            None => field::ETHERTYPE,
        };
        buf[ethertype].copy_from_slice(&self.ethertype.to_be_bytes());
    }
}

/// The length of a header with or without a tag.
pub const fn header_len(tag: Option<Tag>) -> usize {
    if tag.is_some() {
        TAGGED_HEADER_LEN
    } else {
        HEADER_LEN
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

    fn repr() -> Repr {
        Repr {
            dst: [0x02, 0, 0, 0, 0, 0x01],
            src: [0x02, 0, 0, 0, 0, 0x02],
            tag: Some([0x81, 0x00, 0x00, 0x2a]),
            ethertype: ethertype::IPV4,
        }
    }

    #[test]
    fn deconstruct() {
        let frame = Frame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(frame.ethertype(), ethertype::IPV4);
        assert_eq!(frame.header_len(), TAGGED_HEADER_LEN);
        assert_eq!(frame.dst(), [0x02, 0, 0, 0, 0, 0x01]);
        assert_eq!(frame.src(), [0x02, 0, 0, 0, 0, 0x02]);
        assert_eq!(frame.tag(), Some([0x81, 0x00, 0x00, 0x2a]));
        assert_eq!(frame.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn construct() {
        let mut bytes = [0xa5; 20];
        bytes[12..14].copy_from_slice(&[0x81, 0x00]);
        let mut frame = Frame::new_unchecked(&mut bytes[..]);
        frame.set_dst([0x02, 0, 0, 0, 0, 0x01]);
        frame.set_src([0x02, 0, 0, 0, 0, 0x02]);
        frame.payload_mut()[..2].copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(&bytes[..12], &TAGGED[..12]);
        assert_eq!(&bytes[18..], &TAGGED[18..]);
        let mut frame = Frame::new_checked(&mut bytes[..]).unwrap();
        frame.swap_addresses();
        assert_eq!(frame.src(), [0x02, 0, 0, 0, 0, 0x01]);
    }

    #[test]
    fn parse() {
        let frame = Frame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(Repr::parse(&frame), Ok(repr()));
        let untagged = [&TAGGED[..12], &TAGGED[16..]].concat();
        let parsed = Repr::parse(&Frame::new_unchecked(&untagged[..])).unwrap();
        assert_eq!((parsed.tag, parsed.buffer_len()), (None, HEADER_LEN));
    }

    #[test]
    fn emit() {
        let mut bytes = [0xa5; 20];
        let repr = repr();
        repr.emit(&mut bytes);
        assert_eq!(repr.buffer_len(), TAGGED_HEADER_LEN);
        assert_eq!(bytes[..18], TAGGED[..18]);
        assert_eq!(bytes[18..], [0xa5, 0xa5]);
    }

    #[test]
    fn truncated_tag() {
        for len in [13, 16] {
            assert_eq!(
                Frame::new_checked(&TAGGED[..len]).unwrap_err(),
                Error::Truncated(Layer::Ethernet)
            );
        }
    }
}
