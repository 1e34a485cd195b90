//! UDP (RFC 768).

use super::{
    Error, Layer, Result,
    checksum::{self, Delta},
    ports::{self, Ports},
    set_word, word,
};

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = super::ports::field::SRC_PORT;
    pub const DST_PORT: Range<usize> = super::ports::field::DST_PORT;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Length of the header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view of a UDP datagram.
#[derive(Debug)]
pub struct Datagram<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Datagram<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// [`Self::new_unchecked`], then [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let datagram = Self::new_unchecked(buffer);
        datagram.check_len()?;
        Ok(datagram)
    }

    /// Whether the header is there and the length field covers it and fits
    /// the buffer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated(Layer::Udp));
        }
        if self.length() < HEADER_LEN {
            return Err(Error::Malformed(Layer::Udp));
        }
        if self.length() > len {
            return Err(Error::Truncated(Layer::Udp));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// # Panics
    /// Every accessor panics if its field lies beyond the buffer; after
    /// [`Self::check_len`], none does.
    pub fn src_port(&self) -> u16 {
        word(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        word(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header and payload.
    pub fn length(&self) -> usize {
        usize::from(word(self.buffer.as_ref(), field::LENGTH))
    }

    /// Zero on IPv4 means "no checksum" (RFC 768); IPv6 forbids it (RFC
    /// 8200 §8.1) but for tunnels (RFC 6935).
    pub fn checksum(&self) -> u16 {
        word(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.length()]
    }

    /// Whether the checksum is right, given the unfolded sum of the
    /// pseudo-header. A zero checksum is none: it verifies nothing.
    pub fn verify_checksum(&self, pseudo_header: u64) -> bool {
        let datagram = &self.buffer.as_ref()[..self.length()];
        self.checksum() != 0 && checksum::verifies(pseudo_header + checksum::sum(datagram))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Datagram<T> {
    /// Rewrites the ports, and updates the checksum for them and for
    /// `delta`, the change of the pseudo-header's addresses. A checksum of
    /// zero on IPv4 means none and stays zero; a computed zero is sent as
    /// 0xffff (RFC 768). In a datagram cut short (an ICMP error's quote)
    /// only the fields that are there are written.
    pub fn rewrite_ports(&mut self, src: u16, dst: u16, mut delta: Delta, v6: bool) {
        let buf = self.buffer.as_mut();
        if buf.len() < ports::LEN {
            return;
        }
        delta.combine(Ports::new_unchecked(&mut *buf).set(src, dst));
        if buf.len() < field::CHECKSUM.end {
            return;
        }
        let old = word(buf, field::CHECKSUM);
        if old == 0 && !v6 {
            return;
        }
        let new = match delta.apply(old) {
            0 => 0xffff,
            c => c,
        };
        set_word(buf, field::CHECKSUM, new);
    }

    /// Computes the checksum over the whole datagram and the pseudo-header
    /// whose unfolded sum is `pseudo_header`.
    pub fn fill_checksum(&mut self, pseudo_header: u64) {
        let len = self.length();
        let buf = self.buffer.as_mut();
        buf[field::CHECKSUM].fill(0);
        let c = match checksum::finish(pseudo_header + checksum::sum(&buf[..len])) {
            0 => 0xffff,
            c => c,
        };
        set_word(buf, field::CHECKSUM, c);
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
    pub fn parse<T: AsRef<[u8]>>(datagram: &Datagram<T>) -> Result<Self> {
        datagram.check_len()?;
        Ok(Self {
            src_port: datagram.src_port(),
            dst_port: datagram.dst_port(),
            payload_len: datagram.length() - HEADER_LEN,
            checksum: datagram.checksum(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        set_word(buf, field::SRC_PORT, self.src_port);
        set_word(buf, field::DST_PORT, self.dst_port);
        set_word(buf, field::LENGTH, (HEADER_LEN + self.payload_len) as u16);
        set_word(buf, field::CHECKSUM, self.checksum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40000 -> 53, 4 bytes of payload, checksum 0x1234 (not checked).
    static DATAGRAM: [u8; 12] = [0x9c, 0x40, 0x00, 0x35, 0x00, 0x0c, 0x12, 0x34, 1, 2, 3, 4];

    fn repr() -> Repr {
        Repr {
            src_port: 40000,
            dst_port: 53,
            payload_len: 4,
            checksum: 0x1234,
        }
    }

    /// The unfolded pseudo-header sum of 198.18.0.2 -> 198.18.100.1, 12 bytes.
    fn pseudo() -> u64 {
        checksum::pseudo_header_v4(&[198, 18, 0, 2], &[198, 18, 100, 1], 17, 12)
    }

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
    fn construct() {
        let mut bytes = DATAGRAM;
        let mut d = Datagram::new_checked(&mut bytes[..]).unwrap();
        d.fill_checksum(pseudo());
        assert!(d.verify_checksum(pseudo()));
        d.rewrite_ports(1024, 7007, Delta::default(), false);
        assert!(
            d.verify_checksum(pseudo()),
            "the ports' change is in the checksum"
        );
        assert_eq!((d.src_port(), d.dst_port()), (1024, 7007));
        // Without a checksum on IPv4, there is still none after a rewrite.
        let mut bytes = DATAGRAM;
        bytes[6..8].fill(0);
        let mut d = Datagram::new_checked(&mut bytes[..]).unwrap();
        d.rewrite_ports(1, 2, Delta::default(), false);
        assert_eq!(d.checksum(), 0);
        assert!(!d.verify_checksum(pseudo()), "zero verifies nothing");
        // Cut short: only the ports.
        let mut quote = DATAGRAM[..6].to_vec();
        Datagram::new_unchecked(&mut quote[..]).rewrite_ports(1, 2, Delta::default(), true);
        assert_eq!(quote, [0, 1, 0, 2, 0x00, 0x0c]);
    }

    #[test]
    fn parse() {
        let d = Datagram::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(Repr::parse(&d), Ok(repr()));
    }

    #[test]
    fn emit() {
        let mut bytes = [0xa5; 10];
        repr().emit(&mut bytes);
        assert_eq!(bytes[..8], DATAGRAM[..8]);
        assert_eq!(bytes[8..], [0xa5; 2]);
    }

    #[test]
    fn bad_lengths() {
        assert_eq!(
            Datagram::new_checked(&DATAGRAM[..11]).unwrap_err(),
            Error::Truncated(Layer::Udp)
        );
        let mut short = DATAGRAM;
        short[5] = 7;
        assert_eq!(
            Datagram::new_checked(&short[..]).unwrap_err(),
            Error::Malformed(Layer::Udp)
        );
    }
}
