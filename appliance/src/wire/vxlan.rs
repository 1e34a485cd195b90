//! VXLAN (RFC 7348 §5): an 8-byte header in front of an Ethernet frame.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

use super::Error;

/// Length of the header.
pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid. It must be set; every other bit is reserved.
const FLAG_I: u8 = 0x08;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = 0xff_ffff;

/// A view of a VXLAN header and the frame behind it.
#[derive(Debug)]
pub struct Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    /// Whether the I flag is set. Reserved bits are ignored on receive (§5).
    pub fn vni_valid(&self) -> bool {
        self.buffer.as_ref()[0] & FLAG_I != 0
    }

    pub fn vni(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([0, b[4], b[5], b[6]])
    }
}

/// Writes a header for `vni`: the I flag set, every reserved bit zero (§5).
pub fn emit(buf: &mut [u8], vni: u32) {
    let vni = vni.to_be_bytes();
    buf[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, vni[1], vni[2], vni[3], 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_bits_ignored_on_receive_zero_on_send() {
        // vxlan-triple-v2.pcap carries flags 0x0c and a non-zero reserved byte.
        let received = [0x0c, 0, 0, 0, 0, 0, 123, 0x99];
        let p = Packet::new_checked(&received[..]).unwrap();
        assert!(p.vni_valid());
        assert_eq!(p.vni(), 123);
        let mut sent = [0xa5; 8];
        emit(&mut sent, 0x12_3456);
        assert_eq!(sent, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert!(!Packet::new_checked(&[0u8; 8][..]).unwrap().vni_valid());
        assert_eq!(
            Packet::new_checked(&received[..7]).unwrap_err(),
            Error::Truncated
        );
    }
}
