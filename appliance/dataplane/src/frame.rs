//! A frame inside its buffer, with room in front of it to grow into.

/// The packet bytes `start..end` of a buffer: a UMEM frame live, a `Vec`
/// in tests and replay. Pushing a header in front moves `start` back into
/// the headroom; stripping one moves it forward. The payload never moves.
#[derive(Debug)]
pub struct FrameBuf<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
    /// Workers the frame was handed to before this one, unprocessed.
    hops: u8,
}

/// Headroom Rialto's own buffers give a frame (AF_XDP gives 256 bytes:
/// `XDP_PACKET_HEADROOM`). Enough for an IPv6 VXLAN underlay (70 bytes)
/// in front of an ICMPv6 error (48 bytes) with room to spare.
pub const HEADROOM: usize = 256;

impl<'a> FrameBuf<'a> {
    /// The frame `buf[start..start + len]`.
    ///
    /// # Panics
    /// If the range is not inside `buf`.
    pub fn new(buf: &'a mut [u8], start: usize, len: usize) -> Self {
        assert!(start + len <= buf.len(), "frame outside its buffer");
        Self {
            buf,
            start,
            end: start + len,
            hops: 0,
        }
    }

    /// The frame, handed over unprocessed `hops` times already (by workers
    /// that did not have its flow).
    pub fn handed(self, hops: u8) -> Self {
        Self { hops, ..self }
    }

    /// How many workers handed the frame on before this one: 0 if it
    /// comes straight from the NIC.
    pub fn hops(&self) -> u8 {
        self.hops
    }

    /// Where the frame starts in its buffer.
    pub fn start(&self) -> usize {
        self.start
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Where the frame ends in its buffer.
    pub fn end(&self) -> usize {
        self.end
    }

    /// The whole buffer, headroom and tailroom included: the pipeline works
    /// in buffer offsets, so a header can be written in front of the frame.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        self.buf
    }

    /// Makes the frame `buffer[start..end]`. False, and nothing changed, if
    /// that is not inside the buffer.
    pub fn set_bounds(&mut self, start: usize, end: usize) -> bool {
        if start > end || end > self.buf.len() {
            return false;
        }
        self.start = start;
        self.end = end;
        true
    }
}

/// An owned buffer holding one frame behind [`HEADROOM`] bytes: what
/// replay, the tests and the benchmarks feed the pipeline.
#[derive(Clone, Debug)]
pub struct OwnedFrame {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    hops: u8,
}

impl OwnedFrame {
    /// Room after the frame: enough for the largest frame Rialto makes
    /// from it (an ICMP error can be longer than a short frame it quotes).
    const TAILROOM: usize = 2048;

    pub fn new(frame: &[u8]) -> Self {
        Self::with_headroom(frame, HEADROOM)
    }

    /// The frame behind `headroom` bytes instead of [`HEADROOM`].
    pub fn with_headroom(frame: &[u8], headroom: usize) -> Self {
        let mut buf = vec![0; headroom + frame.len() + Self::TAILROOM];
        buf[headroom..headroom + frame.len()].copy_from_slice(frame);
        Self {
            buf,
            start: headroom,
            len: frame.len(),
            hops: 0,
        }
    }

    /// The frame, as handed on by `hops` workers before ([`FrameBuf::hops`]).
    pub fn handed(self, hops: u8) -> Self {
        Self { hops, ..self }
    }

    /// Resets the contents to `frame`, reusing the buffer.
    pub fn load(&mut self, frame: &[u8]) {
        let need = HEADROOM + frame.len() + Self::TAILROOM;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        self.start = HEADROOM;
        self.len = frame.len();
        self.buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    }

    /// Lends the frame to the pipeline; whatever it makes of it is kept.
    pub fn with<R>(&mut self, f: impl FnOnce(&mut FrameBuf<'_>) -> R) -> R {
        let mut frame = FrameBuf::new(&mut self.buf, self.start, self.len).handed(self.hops);
        let result = f(&mut frame);
        self.start = frame.start;
        self.len = frame.len();
        result
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_stay_within_the_buffer() {
        let mut owned = OwnedFrame::new(&[1, 2, 3, 4]);
        owned.with(|f| {
            assert_eq!((f.start(), f.end()), (HEADROOM, HEADROOM + 4));
            assert!(f.set_bounds(HEADROOM - 2, HEADROOM + 3));
            assert_eq!(f.data(), &[0, 0, 1, 2, 3]);
            assert!(f.set_bounds(HEADROOM + 1, HEADROOM + 3));
            assert_eq!(f.data(), &[2, 3]);
            assert!(!f.set_bounds(5, 4));
            assert!(!f.set_bounds(0, 100_000));
            assert_eq!(f.data(), &[2, 3]);
        });
        assert_eq!(owned.data(), &[2, 3]);
    }
}
