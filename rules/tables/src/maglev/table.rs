//! A service's lookup table: slot -> backend index, and its lookup.

use std::fmt;

/// A service's Maglev lookup table.
#[derive(Clone, PartialEq, Eq)]
pub struct Table {
    slots: Box<[u32]>,
    /// How many slots each backend owns, indexed like the `backends` slice
    /// the table was built from (whose length it has).
    counts: Box<[u32]>,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("size", &self.size())
            .field("backends", &self.counts.len())
            .finish_non_exhaustive()
    }
}

impl Table {
    /// The table of `slots` (each an index below `backends`).
    pub(super) fn new(slots: Box<[u32]>, backends: usize) -> Self {
        let mut counts = vec![0; backends];
        for &index in &*slots {
            counts[index as usize] += 1;
        }
        Self {
            slots,
            counts: counts.into_boxed_slice(),
        }
    }

    /// How many backends the table was built from.
    pub fn backends(&self) -> usize {
        self.counts.len()
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

    /// How many slots each backend owns, indexed like the `backends` slice
    /// (counted once, when the table was built).
    pub fn slot_counts(&self) -> &[u32] {
        &self.counts
    }
}
