//! The two ports UDP and TCP both begin with: what a load balancer keys
//! flows by, and what an ICMP error's quote must hold at least (RFC 792:
//! 8 bytes of the transport header).

use super::{Error, Layer, Result, checksum::Delta, set_word, swap_ranges, word};

pub(super) mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const BOTH: Range<usize> = 0..4;
}

/// Bytes a transport header must have for its ports to be read.
pub const LEN: usize = field::DST_PORT.end;

/// A view of the ports at the start of a UDP or TCP header (`layer`).
#[derive(Debug)]
pub struct Ports<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ports<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// The ports of a `layer` header (UDP or TCP), if they are there.
    pub fn new_checked(buffer: T, layer: Layer) -> Result<Self> {
        if buffer.as_ref().len() < LEN {
            return Err(Error::Truncated(layer));
        }
        Ok(Self { buffer })
    }

    pub fn src(&self) -> u16 {
        word(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst(&self) -> u16 {
        word(self.buffer.as_ref(), field::DST_PORT)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ports<T> {
    /// Rewrites both ports; returns the change, for the header's checksum.
    pub fn set(&mut self, src: u16, dst: u16) -> Delta {
        let buf = self.buffer.as_mut();
        let mut delta = Delta::default();
        delta.add_word(word(buf, field::SRC_PORT), src);
        delta.add_word(word(buf, field::DST_PORT), dst);
        set_word(buf, field::SRC_PORT, src);
        set_word(buf, field::DST_PORT, dst);
        debug_assert_eq!(field::BOTH.end, LEN);
        delta
    }

    /// Swaps source and destination. Checksum-neutral: the ones'-complement
    /// sum does not depend on the order of its words.
    pub fn swap(&mut self) {
        swap_ranges(self.buffer.as_mut(), field::SRC_PORT, field::DST_PORT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deconstruct_construct() {
        let mut bytes = [0x9c, 0x40, 0x00, 0x50, 0xa5];
        let mut p = Ports::new_checked(&mut bytes[..], Layer::Tcp).unwrap();
        assert_eq!((p.src(), p.dst()), (40000, 80));
        p.swap();
        assert_eq!((p.src(), p.dst()), (80, 40000));
        let delta = p.set(40000, 80);
        assert_eq!(bytes, [0x9c, 0x40, 0x00, 0x50, 0xa5]);
        assert_eq!(delta.apply(0xabcd), 0xabcd, "a swap back changes no sum");
        assert_eq!(
            Ports::new_checked(&bytes[..3], Layer::Udp).unwrap_err(),
            Error::Truncated(Layer::Udp)
        );
    }
}
