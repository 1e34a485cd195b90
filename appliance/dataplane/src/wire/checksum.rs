//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are kept unfolded in a `u64` while they are built, folded to 16 bits
//! at the end. A checksum field holds the ones' complement of the folded sum
//! of everything it covers (with the field itself taken as zero).

/// Ones'-complement sum of `data` as big-endian 16-bit words; an odd last
/// byte is padded with zero (RFC 1071 §4.1). Unfolded: add sums, then [`fold`].
///
/// Summed 32 bits at a time (RFC 1071 §2 (B): 2^16 is 1 in ones'-complement
/// arithmetic, so a 32-bit word counts as its two halves; [`fold`] gives
/// the same 16 bits).
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut quads = data.chunks_exact(4);
    let mut acc: u64 = quads
        .by_ref()
        .map(|q| u64::from(u32::from_be_bytes([q[0], q[1], q[2], q[3]])))
        .sum();
    match *quads.remainder() {
        [a, b, c] => acc += u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        [a, b] => acc += u64::from(u16::from_be_bytes([a, b])),
        [a] => acc += u64::from(a) << 8,
        _ => {}
    }
    acc
}

/// Folds the carries of an unfolded sum back into 16 bits, without a
/// branch: the two 32-bit halves added with their carry put back (end
/// around), then the two 16-bit halves likewise, by adding the word to
/// itself turned half way round: the upper half of that sum is the two
/// halves' sum with the carry out of the lower half in it. Zero only for
/// zero, as folding 16 bits at a time until the sum fits gives.
#[inline]
pub fn fold(acc: u64) -> u16 {
    let (sum, carry) = (acc as u32).overflowing_add((acc >> 32) as u32);
    // At most 2^32 - 2 when it carried: adding the carry cannot overflow.
    let sum = sum + u32::from(carry);
    (sum.wrapping_add(sum.rotate_left(16)) >> 16) as u16
}

/// The checksum field value for data whose unfolded sum is `acc`.
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Whether a region that includes its own checksum field sums to all ones
/// (the check of RFC 1071 §2).
#[inline]
pub fn verifies(acc: u64) -> bool {
    fold(acc) == 0xffff
}

/// Whether `data`, whole 32-bit words that include their checksum field,
/// sums to all ones ([`verifies`]), summed in the machine's byte order: a
/// ones'-complement sum of byte-swapped words is the sum byte-swapped (RFC
/// 1071 §2 (B)), and all ones swapped is all ones, so no word is swapped.
#[inline]
pub fn verifies_words(data: &[u8]) -> bool {
    debug_assert!(data.len().is_multiple_of(4), "whole 32-bit words");
    let sum = (data.chunks_exact(4))
        .map(|q| u64::from(u32::from_ne_bytes([q[0], q[1], q[2], q[3]])))
        .sum();
    verifies(sum)
}

/// The checksum after the covered bytes `old` became `new` (equal, even
/// lengths, 16-bit aligned within the covered data): RFC 1624 eqn. 3,
/// `HC' = ~(~HC + ~m + m')`, applied word by word.
#[inline]
pub fn update(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut delta = Delta::default();
    delta.add(old, new);
    delta.apply(checksum)
}

/// Several edits to the data a checksum covers, gathered so the checksum is
/// updated once: the `~m + m'` terms of RFC 1624 eqn. 3.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delta(u64);

impl Delta {
    /// Records that `old` became `new` (equal, even lengths, 16-bit aligned).
    #[inline]
    pub fn add(&mut self, old: &[u8], new: &[u8]) {
        debug_assert_eq!(old.len(), new.len());
        debug_assert_eq!(old.len() % 2, 0);
        let old_complement: u64 = old
            .chunks_exact(2)
            .map(|w| u64::from(!u16::from_be_bytes([w[0], w[1]])))
            .sum();
        self.0 += old_complement + sum(new);
    }

    /// Records that the 16-bit word `old` became `new`.
    #[inline]
    pub fn add_word(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// The recorded edits' sum, folded: in 1..=0xffff unless there were
    /// none (or only edits of all-ones words into zeros).
    #[inline]
    pub fn folded(self) -> u16 {
        fold(self.0)
    }

    /// Adds the edits `other` recorded.
    #[inline]
    pub fn combine(&mut self, other: Self) {
        self.0 += other.0;
    }

    /// The checksum with every recorded edit applied.
    #[inline]
    pub fn apply(self, checksum: u16) -> u16 {
        !fold(u64::from(!checksum) + self.0)
    }
}

/// [`update`] for one 16-bit word.
#[inline]
pub fn update_word(checksum: u16, old: u16, new: u16) -> u16 {
    update(checksum, &old.to_be_bytes(), &new.to_be_bytes())
}

/// The unfolded sum of the IPv4 pseudo-header (RFC 768, RFC 9293 §3.1).
#[inline]
pub fn pseudo_header_v4(src: &[u8; 4], dst: &[u8; 4], protocol: u8, len: usize) -> u64 {
    sum(src) + sum(dst) + u64::from(protocol) + len as u64
}

/// The unfolded sum of the IPv6 pseudo-header (RFC 8200 §8.1).
#[inline]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, len: usize) -> u64 {
    sum(src) + sum(dst) + u64::from(next_header) + len as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of RFC 1071 §3.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(finish(sum(&data)), !0xddf2);
    }

    /// Folding 16 bits at a time until the sum fits: what [`fold`] gives.
    fn fold_by_loop(mut acc: u64) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn folds_at_the_edges_as_the_loop_does() {
        for acc in [
            0,
            1,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0xffff_ffff,
            0x1_0000_0000,
            0xffff_0001,
            u64::MAX,
            u64::MAX - 1,
            0xffff_ffff_0000_0000,
        ] {
            assert_eq!(fold(acc), fold_by_loop(acc), "{acc:#x}");
        }
    }

    proptest::proptest! {
        /// Folded without a branch as by the loop.
        #[test]
        fn folds_as_the_loop_does(acc in proptest::prelude::any::<u64>()) {
            proptest::prop_assert_eq!(fold(acc), fold_by_loop(acc));
        }

        /// Summing by 32 bits folds to what summing by 16 does.
        #[test]
        fn the_sum_by_32_bits_is_the_sum_by_16(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut words = data.chunks_exact(2);
            let mut by16: u64 = words.by_ref().map(|w| u64::from(u16::from_be_bytes([w[0], w[1]]))).sum();
            if let [last] = words.remainder() {
                by16 += u64::from(*last) << 8;
            }
            proptest::prop_assert_eq!(fold(sum(&data)), fold(by16));
        }

        /// Verified by whole words in the machine's byte order as by
        /// [`sum`]: data made to verify (its first word's checksum field
        /// set), and the same with a byte changed.
        #[test]
        fn words_verify_unswapped_as_swapped(
            mut data in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..50),
            at in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            data.resize(data.len().div_ceil(4) * 4, 0);
            data[..2].fill(0);
            let c = finish(sum(&data));
            data[..2].copy_from_slice(&c.to_be_bytes());
            proptest::prop_assert!(verifies_words(&data));
            let at = at.index(data.len());
            data[at] ^= 0x5a;
            proptest::prop_assert_eq!(verifies_words(&data), verifies(sum(&data)));
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    /// RFC 1624 §4: the incremental update gives the same checksum as a full
    /// recomputation, including the case eqn. 2 gets wrong (a result of -0).
    #[test]
    fn incremental_equals_recomputation() {
        let mut data = [0xcd, 0x13, 0x55, 0x55, 0x00, 0x00];
        let before = finish(sum(&data));
        data[0..2].copy_from_slice(&[0x32, 0x13]);
        let after = finish(sum(&data));
        assert_eq!(update(before, &[0xcd, 0x13], &[0x32, 0x13]), after);
        assert_eq!(update_word(before, 0xcd13, 0x3213), after);
    }

    #[test]
    fn verify_includes_the_field() {
        let mut header = [
            0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 18, 100, 1,
        ];
        let c = finish(sum(&header));
        header[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verifies(sum(&header)));
        header[8] = 63;
        assert!(!verifies(sum(&header)));
    }
}
