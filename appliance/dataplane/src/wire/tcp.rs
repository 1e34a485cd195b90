//! TCP (RFC 9293): the fields a load balancer reads and rewrites.

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
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    /// The data offset in the high 4 bits; 3 reserved bits and NS below.
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = field::URGENT.end;

/// Control bits (RFC 9293 §3.1).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    /// Whether a segment may carry these control bits: the combinations
    /// Linux's conntrack accepts (`tcp_valid_flags` in
    /// `nf_conntrack_proto_tcp.c`), PSH, ECE and CWR aside. SYN with FIN
    /// or RST, FIN without ACK, and no bits at all are what scanners send.
    pub const fn valid(bits: u8) -> bool {
        matches!(
            bits & !(PSH | ECE | CWR),
            SYN | 0x22 // SYN | URG
                | 0x12 // SYN | ACK
                | RST
                | 0x14 // RST | ACK
                | 0x11 // FIN | ACK
                | 0x31 // FIN | ACK | URG
                | ACK
                | 0x30 // ACK | URG
        )
    }
}

/// A view of a TCP segment.
#[derive(Debug)]
pub struct Segment<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Segment<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// [`Self::new_unchecked`], then [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let segment = Self::new_unchecked(buffer);
        segment.check_len()?;
        Ok(segment)
    }

    /// Whether the header, options included, is there.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(Error::Truncated(Layer::Tcp));
        }
        if self.header_len() < MIN_HEADER_LEN {
            return Err(Error::Malformed(Layer::Tcp));
        }
        if self.header_len() > len {
            return Err(Error::Truncated(Layer::Tcp));
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

    pub fn seq(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::SEQ];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn ack(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::ACK];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The control bits (CWR..FIN).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn window(&self) -> u16 {
        word(self.buffer.as_ref(), field::WINDOW)
    }

    pub fn checksum(&self) -> u16 {
        word(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn urgent(&self) -> u16 {
        word(self.buffer.as_ref(), field::URGENT)
    }

    /// Whether the checksum over the whole segment is right, given the
    /// unfolded sum of the pseudo-header.
    pub fn verify_checksum(&self, pseudo_header: u64) -> bool {
        checksum::verifies(pseudo_header + checksum::sum(self.buffer.as_ref()))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Segment<T> {
    /// Rewrites the ports, and updates the checksum for them and for
    /// `delta`, the change of the pseudo-header's addresses. In a segment
    /// cut short (an ICMP error's quote) only the fields that are there are
    /// written.
    pub fn rewrite_ports(&mut self, src: u16, dst: u16, mut delta: Delta) {
        let buf = self.buffer.as_mut();
        if buf.len() < ports::LEN {
            return;
        }
        delta.combine(Ports::new_unchecked(&mut *buf).set(src, dst));
        if buf.len() >= field::CHECKSUM.end {
            let c = delta.apply(word(buf, field::CHECKSUM));
            set_word(buf, field::CHECKSUM, c);
        }
    }

    /// Computes the checksum over the whole segment and the pseudo-header
    /// whose unfolded sum is `pseudo_header`.
    pub fn fill_checksum(&mut self, pseudo_header: u64) {
        let buf = self.buffer.as_mut();
        buf[field::CHECKSUM].fill(0);
        let c = checksum::finish(pseudo_header + checksum::sum(buf));
        set_word(buf, field::CHECKSUM, c);
    }
}

/// The fields of a fresh, option-less header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

impl Repr {
    /// The fields of a whole header (options, if any, are not kept).
    pub fn parse<T: AsRef<[u8]>>(segment: &Segment<T>) -> Result<Self> {
        segment.check_len()?;
        Ok(Self {
            src_port: segment.src_port(),
            dst_port: segment.dst_port(),
            seq: segment.seq(),
            ack: segment.ack(),
            flags: segment.flags(),
            window: segment.window(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        MIN_HEADER_LEN
    }

    /// Writes the header into the first [`MIN_HEADER_LEN`] bytes of `buf`,
    /// checksum zero (see [`Segment::fill_checksum`]).
    ///
    /// # Panics
    /// If `buf` is shorter than [`MIN_HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        set_word(buf, field::SRC_PORT, self.src_port);
        set_word(buf, field::DST_PORT, self.dst_port);
        buf[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        buf[field::ACK].copy_from_slice(&self.ack.to_be_bytes());
        buf[field::DATA_OFFSET] = ((MIN_HEADER_LEN / 4) as u8) << 4;
        buf[field::FLAGS] = self.flags;
        set_word(buf, field::WINDOW, self.window);
        set_word(buf, field::CHECKSUM, 0);
        set_word(buf, field::URGENT, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40000 -> 80, seq 1, ack 2, SYN, window 64240, one 4-byte option
    /// (MSS 1460), no payload; checksum over the pseudo-header below.
    fn segment() -> Vec<u8> {
        let mut s = vec![
            0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 2, 0x60, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
            0x02, 0x04, 0x05, 0xb4,
        ];
        Segment::new_unchecked(&mut s[..]).fill_checksum(pseudo());
        s
    }

    fn pseudo() -> u64 {
        checksum::pseudo_header_v4(&[198, 18, 0, 2], &[198, 18, 100, 1], 6, 24)
    }

    fn repr() -> Repr {
        Repr {
            src_port: 40000,
            dst_port: 80,
            seq: 1,
            ack: 2,
            flags: flags::SYN,
            window: 64240,
        }
    }

    #[test]
    fn deconstruct() {
        let bytes = segment();
        let s = Segment::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            (s.src_port(), s.dst_port(), s.seq(), s.ack()),
            (40000, 80, 1, 2)
        );
        assert_eq!(
            (s.header_len(), s.flags(), s.window(), s.urgent()),
            (24, flags::SYN, 64240, 0)
        );
        assert!(s.verify_checksum(pseudo()));
        // etherparse, independently, agrees on the checksum.
        let parsed = etherparse::TcpHeaderSlice::from_slice(&bytes).unwrap();
        let computed = parsed
            .to_header()
            .calc_checksum_ipv4_raw([198, 18, 0, 2], [198, 18, 100, 1], &[])
            .unwrap();
        assert_eq!(computed, s.checksum());
    }

    #[test]
    fn construct() {
        let mut bytes = segment();
        let mut s = Segment::new_checked(&mut bytes[..]).unwrap();
        s.rewrite_ports(1024, 8080, Delta::default());
        assert!(s.verify_checksum(pseudo()));
        assert_eq!((s.src_port(), s.dst_port()), (1024, 8080));
        // A quote of 8 bytes: the ports only.
        let mut quote = segment()[..8].to_vec();
        Segment::new_unchecked(&mut quote[..]).rewrite_ports(1, 2, Delta::default());
        assert_eq!(quote, [0, 1, 0, 2, 0, 0, 0, 1]);
    }

    #[test]
    fn parse() {
        let bytes = segment();
        assert_eq!(Repr::parse(&Segment::new_unchecked(&bytes[..])), Ok(repr()));
    }

    #[test]
    fn emit() {
        let mut bytes = [0xa5; 22];
        repr().emit(&mut bytes);
        assert_eq!(bytes[20..], [0xa5; 2]);
        let mut s = Segment::new_unchecked(&mut bytes[..20]);
        s.fill_checksum(checksum::pseudo_header_v4(
            &[198, 18, 0, 2],
            &[198, 18, 100, 1],
            6,
            20,
        ));
        let parsed = etherparse::TcpHeaderSlice::from_slice(&bytes).unwrap();
        assert_eq!(
            (parsed.source_port(), parsed.destination_port()),
            (40000, 80)
        );
        assert!(parsed.syn() && !parsed.ack());
        let computed = parsed
            .to_header()
            .calc_checksum_ipv4_raw([198, 18, 0, 2], [198, 18, 100, 1], &[])
            .unwrap();
        assert_eq!(computed, parsed.checksum());
    }

    #[test]
    fn valid_flag_combinations() {
        use flags::*;
        for ok in [
            SYN,
            SYN | ACK,
            SYN | ECE | CWR,
            ACK,
            ACK | PSH,
            FIN | ACK,
            RST,
            RST | ACK,
        ] {
            assert!(valid(ok), "{ok:#04x}");
        }
        for bad in [
            0,
            FIN,
            SYN | FIN,
            SYN | RST,
            FIN | RST | ACK,
            SYN | FIN | PSH | URG,
            FIN | PSH | URG,
        ] {
            assert!(!valid(bad), "{bad:#04x}");
        }
    }

    #[test]
    fn bad_lengths() {
        let mut bytes = segment();
        assert_eq!(
            Segment::new_checked(&bytes[..23]).unwrap_err(),
            Error::Truncated(Layer::Tcp)
        );
        bytes[12] = 4 << 4;
        assert_eq!(
            Segment::new_checked(&bytes[..]).unwrap_err(),
            Error::Malformed(Layer::Tcp)
        );
    }
}
