//! Where a flow table's memory comes from: its slots, and the zeroed
//! arrays of its indexes.
//!
//! At a million flows and more, a lookup reads a slot and an index bucket
//! at random in tens of megabytes: on 4 KB pages, each read also misses the
//! TLB, and its page walk comes before the line. `rialto run` maps its
//! slots from a file and its indexes from anonymous memory, both advised
//! to 2 MB pages (`madvise(MADV_HUGEPAGE)`); this crate does no I/O, so it
//! asks its storage for the indexes' arrays ([`FlowMemory::zeroed`]), and
//! on the heap ([`Box`]) they are plain allocations.

use std::{fmt::Debug, ops::DerefMut};

use bytemuck::Pod;

use super::Slot;

/// A flow table's slots, and where the arrays of its indexes come from.
pub trait FlowMemory: DerefMut<Target = [Slot]> {
    /// An array of an index: `len` values, zeroed.
    type Array<T: Pod + Debug>: DerefMut<Target = [T]> + Debug;

    /// `len` zeroed values, allocated as a table is made (or, for the
    /// reply index, again if a reload adds SNAT addresses): never per
    /// packet.
    fn zeroed<T: Pod + Debug>(len: usize) -> Self::Array<T>;
}

/// Slots on the heap; the indexes' arrays too.
impl FlowMemory for Box<[Slot]> {
    type Array<T: Pod + Debug> = Box<[T]>;

    fn zeroed<T: Pod + Debug>(len: usize) -> Box<[T]> {
        bytemuck::zeroed_slice_box(len)
    }
}
