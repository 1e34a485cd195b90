//! A service's lookup table: slot -> backend index, and its lookup.

use std::fmt;

use super::{CiliumSeed, MaglevError, MaglevHash, WeightedBackend, cilium, rialto};

/// A service's Maglev lookup table.
#[derive(Clone, PartialEq, Eq)]
pub struct Table {
    pub(super) slots: Box<[u32]>,
    /// How many backends the table was built from (the slice's length).
    pub(super) backends: usize,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("size", &self.size())
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// Builds the table of `size` slots for `backends` (module doc). Cilium
    /// mode uses Cilium's default seed.
    ///
    /// Fails if `size` is not a prime up to [`MAX_TABLE_SIZE`] (in Cilium
    /// mode: one of [`CILIUM_TABLE_SIZES`]), if there are no backends, more
    /// than `size`, an endpoint listed twice, or no positive weight, and in
    /// Cilium mode if a weight exceeds 65535.
    pub fn build(
        hash: MaglevHash,
        size: u32,
        backends: &[WeightedBackend],
    ) -> Result<Self, MaglevError> {
        match hash {
            MaglevHash::Rialto => rialto::build(size, backends),
            MaglevHash::Cilium => cilium::build(CiliumSeed::DEFAULT, size, backends),
        }
    }

    /// Cilium mode with a non-default `bpf-lb-maglev-hash-seed`.
    pub fn build_cilium(
        seed: CiliumSeed,
        size: u32,
        backends: &[WeightedBackend],
    ) -> Result<Self, MaglevError> {
        cilium::build(seed, size, backends)
    }

    /// M.
    pub fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Slot → index into the `backends` slice the table was built from.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The backend index of the slot `flow_hash % M`.
    #[inline]
    pub fn lookup(&self, flow_hash: u64) -> u32 {
        self.slots[(flow_hash % self.slots.len() as u64) as usize]
    }

    /// How many slots each backend owns, indexed like the `backends` slice.
    pub fn slot_counts(&self) -> Vec<u32> {
        let mut counts = vec![0; self.backends];
        for &index in &*self.slots {
            counts[index as usize] += 1;
        }
        counts
    }
}
