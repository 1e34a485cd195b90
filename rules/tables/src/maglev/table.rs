//! A service's lookup table: slot -> backend index, and its lookup.

use std::fmt;

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
