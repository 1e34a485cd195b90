//! VXLAN (RFC 7348 §5): an 8-byte header in front of an Ethernet frame.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

use super::{Error, Layer, Result};

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const RESERVED: Range<usize> = 1..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED_2: usize = 7;
}

/// Length of the header.
pub const HEADER_LEN: usize = field::RESERVED_2 + 1;
/// The I flag: the VNI is valid. It must be set; every other bit is reserved.
pub const FLAG_I: u8 = 0x08;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = 0xff_ffff;

/// A view of a VXLAN header and the frame behind it.
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

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated(Layer::Vxlan));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag is set. Reserved bits are ignored on receive (§5).
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The encapsulated Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// The fields of a fresh header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub vni: u32,
}

impl Repr {
    /// The VNI of a header with the I flag set.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self> {
        packet.check_len()?;
        if !packet.vni_valid() {
            return Err(Error::Malformed(Layer::Vxlan));
        }
        Ok(Self { vni: packet.vni() })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: the I flag set, every reserved bit zero (§5).
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::FLAGS] = FLAG_I;
        buf[field::RESERVED].fill(0);
        buf[field::VNI].copy_from_slice(&self.vni.to_be_bytes()[1..]);
        buf[field::RESERVED_2] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vxlan-triple-v2.pcap carries flags 0x0c and a non-zero reserved byte.
    static RECEIVED: [u8; 10] = [0x0c, 0, 0, 0, 0, 0, 123, 0x99, 0xaa, 0xbb];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&RECEIVED[..]).unwrap();
        assert!(p.vni_valid(), "reserved bits are ignored on receive");
        assert_eq!((p.flags(), p.vni()), (0x0c, 123));
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
        assert!(!Packet::new_unchecked(&[0u8; 8][..]).vni_valid());
    }

    #[test]
    fn construct() {
        let mut bytes = [0xa5; 8];
        Repr { vni: 0x12_3456 }.emit(&mut bytes);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!((p.vni(), p.vni_valid()), (0x12_3456, true));
    }

    #[test]
    fn parse() {
        let p = Packet::new_checked(&RECEIVED[..]).unwrap();
        assert_eq!(Repr::parse(&p), Ok(Repr { vni: 123 }));
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&[0u8; 8][..])),
            Err(Error::Malformed(Layer::Vxlan))
        );
        assert_eq!(
            Packet::new_checked(&RECEIVED[..7]).unwrap_err(),
            Error::Truncated(Layer::Vxlan)
        );
    }

    #[test]
    fn emit() {
        let mut sent = [0xa5; 9];
        Repr { vni: 0x12_3456 }.emit(&mut sent);
        assert_eq!(sent, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xa5]);
    }
}
