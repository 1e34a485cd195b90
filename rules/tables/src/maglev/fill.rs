//! The population loop both modes share (the paper's Pseudocode 1).

use super::Table;

/// The population loop (the paper's Pseudocode 1): where each backend's walk
/// stands, and which slots are taken.
///
/// Probing costs about M·ln M steps in all, most of them at the end, when a
/// walk meets taken slot after taken slot: with `E` slots left a turn takes
/// M/E probes on average. So once at most `tail` slots are left,
/// a turn instead finds, among the free slots `e`, the one its walk reaches
/// first: the smallest `j = (e − next)·skip⁻¹ mod M`. That is the slot the
/// probing would have found, at a cost of `E` multiplications. The tail
/// starts at about √M free slots, where M/E probes and E multiplications
/// cost the same.
#[derive(Debug)]
pub(super) struct Fill {
    m: u32,
    /// The length of the caller's slice.
    backends: usize,
    slots: Vec<u32>,
    /// One bit per slot, set once taken: 8 KiB for M = 65537, so the probe
    /// loop stays in L1 while `slots` is only written.
    taken: Vec<u64>,
    /// Slots still free; filled in when the tail starts.
    free: Vec<u32>,
    /// How many slots are free.
    left: u32,
    /// How many free slots the tail starts at.
    tail: u32,
    /// ⌊2⁶⁴ / M⌋, for Barrett reduction in the tail.
    reciprocal: u64,
    /// Per backend in turn order.
    walks: Vec<Walk>,
}

#[derive(Debug)]
struct Walk {
    /// The next slot of the walk.
    next: u32,
    skip: u32,
    /// skip⁻¹ mod M, computed at the backend's first tail turn (0 before).
    inverse: u32,
    /// The backend's index in the caller's slice.
    index: u32,
}

impl Fill {
    /// `m` is prime, so at least 2: its square root is below it, and the
    /// tail starts after the first turn at the earliest.
    pub(super) fn new(m: u32, backends: usize) -> Self {
        Self {
            m,
            backends,
            slots: vec![0; m as usize],
            taken: vec![0; (m as usize).div_ceil(64)],
            free: Vec::new(),
            left: m,
            tail: m.isqrt(),
            reciprocal: u64::MAX / u64::from(m),
            walks: Vec::with_capacity(backends),
        }
    }

    /// Adds a backend's walk; `offset < M` and `0 < skip < M`.
    pub(super) fn add(&mut self, offset: u64, skip: u64, index: u32) {
        self.walks.push(Walk {
            next: offset as u32,
            skip: skip as u32,
            inverse: 0,
            index,
        });
    }

    /// Backend `i` (in `add` order) claims the next free slot of its walk.
    /// There is one while turns < M, as every walk visits every slot.
    #[inline]
    pub(super) fn turn(&mut self, i: usize) {
        if self.left > self.tail {
            self.probe(i);
        } else {
            self.tail_turn(i);
        }
        self.left -= 1;
        if self.left == self.tail {
            self.free = (0..self.m)
                .filter(|&slot| self.taken[slot as usize / 64] & (1 << (slot % 64)) == 0)
                .collect();
        }
    }

    #[inline]
    fn probe(&mut self, i: usize) {
        let m = self.m;
        let walk = &mut self.walks[i];
        let mut slot = walk.next;
        loop {
            let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
            let free = self.taken[word] & bit == 0;
            let here = slot;
            // slot + skip < 2M <= 2^25: no overflow, one conditional subtract.
            slot += walk.skip;
            if slot >= m {
                slot -= m;
            }
            if free {
                self.taken[word] |= bit;
                self.slots[here as usize] = walk.index;
                break;
            }
        }
        walk.next = slot;
    }

    fn tail_turn(&mut self, i: usize) {
        let m = self.m;
        let walk = &mut self.walks[i];
        if walk.inverse == 0 {
            walk.inverse = inverse_mod(walk.skip, m);
        }
        let (next, inverse) = (u64::from(walk.next), u64::from(walk.inverse));
        let m64 = u64::from(m);
        let mut best = (u64::MAX, 0);
        for (at, &slot) in self.free.iter().enumerate() {
            let slot = u64::from(slot);
            let steps = if slot >= next {
                slot - next
            } else {
                slot + m64 - next
            };
            // Barrett: steps·inverse < M² < 2⁶⁴, so the quotient estimate is
            // at most one short.
            let x = steps * inverse;
            let q = ((u128::from(x) * u128::from(self.reciprocal)) >> 64) as u64;
            let mut j = x - q * m64;
            if j >= m64 {
                j -= m64;
            }
            if j < best.0 {
                best = (j, at);
            }
        }
        let slot = self.free.swap_remove(best.1);
        self.slots[slot as usize] = walk.index;
        walk.next = if slot + walk.skip >= m {
            slot + walk.skip - m
        } else {
            slot + walk.skip
        };
    }

    pub(super) fn finish(self) -> Table {
        debug_assert!(self.left == 0 && self.free.is_empty());
        Table::new(self.slots.into_boxed_slice(), self.backends)
    }
}

/// `a⁻¹ mod m` for `0 < a < m`, `m` prime (extended Euclid).
fn inverse_mod(a: u32, m: u32) -> u32 {
    let (mut r0, mut r1) = (i64::from(m), i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    debug_assert_eq!(r0, 1, "{a} and {m} are not coprime");
    t0.rem_euclid(i64::from(m)) as u32
}
