//! Memory mapped for a flow table ([`Mapped`]): a file mapped shared, where
//! the slots live so that they outlive the process ([`crate::state`]), and
//! anonymous memory, for its indexes (and for the benchmarks' slots).
//!
//! Both are advised to 2 MB pages: a lookup in a large table reads a slot
//! and an index bucket at random, and on 4 KB pages each read also misses
//! the TLB. Anonymous memory gets them where transparent huge pages are
//! `always` or `madvise` (Debian's default); a file, only on a tmpfs mounted
//! with `huge=` (`/dev/shm` is not: see the README).
//!
//! With the AF_XDP rings and UMEM ([`crate::afxdp`]), the only `unsafe`
//! code of the appliance: mapping a file, and reading a mapping as the
//! values it holds, once checked, not on each access (`bytemuck`'s checked
//! cast on every access cost about 100 instructions a packet).

use std::{
    fmt,
    fs::File,
    marker::PhantomData,
    ops::{Deref, DerefMut},
};

use bytemuck::Pod;
use memmap2::{Advice, MmapMut};
use rialto_dataplane::pipeline::conntrack::{FlowMemory, Slot};

/// `len` values of `T` after `offset` bytes of a mapping (a file's header),
/// which this owns.
pub struct Mapped<T> {
    map: MmapMut,
    offset: usize,
    len: usize,
    of: PhantomData<T>,
}

impl<T: Pod> Mapped<T> {
    /// The first `offset` bytes of `file`, then `len` `T`s, mapped shared
    /// and writable; the file must have them.
    pub fn file(file: &File, offset: usize, len: usize) -> std::io::Result<Self> {
        let bytes = offset + len * size_of::<T>();
        // SAFETY: the file is one of the state directory's, which this
        // process holds locked (`StateDir::open`): no other Rialto maps or
        // truncates it meanwhile, and it was sized to `bytes` before. What
        // it holds is only ever read as plain-old-data (`T: Pod`), so any
        // bytes found there are valid values.
        let map = unsafe { memmap2::MmapOptions::new().len(bytes).map_mut(file)? };
        Ok(Self::new(map, offset, len))
    }

    /// `len` zeroed `T`s in anonymous memory. Pages not touched are not
    /// allocated, as with `calloc`.
    ///
    /// # Panics
    /// If the memory cannot be mapped: as an allocation that fails aborts.
    pub fn anon(len: usize) -> Self {
        let bytes = (len * size_of::<T>()).max(1);
        let map = MmapMut::map_anon(bytes).expect("anonymous memory for a flow table");
        Self::new(map, 0, len)
    }

    /// `map` holding `offset` bytes and then `len` `T`s, which is checked
    /// here, once; advised to huge pages (advice: a kernel or filesystem
    /// without them leaves 4 KB pages, and that is no error).
    fn new(map: MmapMut, offset: usize, len: usize) -> Self {
        let at = map.as_ptr() as usize + offset;
        assert!(
            at.is_multiple_of(align_of::<T>()) && offset + len * size_of::<T>() <= map.len(),
            "the values lie aligned inside the mapping"
        );
        if let Err(e) = map.advise(Advice::HugePage) {
            tracing::debug!("no huge pages for a flow table: {e}");
        }
        Self {
            map,
            offset,
            len,
            of: PhantomData,
        }
    }

    /// The bytes before the values.
    pub fn head_mut(&mut self) -> &mut [u8] {
        &mut self.map[..self.offset]
    }
}

impl<T: Pod> Deref for Mapped<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `new` checked that `len` `T`s lie inside the mapping from
        // `offset`, aligned; the mapping lives as long as `self`, and the
        // borrow of `self` keeps it from being changed meanwhile. `T: Pod`:
        // any bytes are a valid value.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.offset).cast(), self.len) }
    }
}

impl<T: Pod> DerefMut for Mapped<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`; the borrow of `self` is exclusive, and so
        // is this view of the values (the bytes before them are apart).
        unsafe {
            std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(self.offset).cast(), self.len)
        }
    }
}

impl<T> fmt::Debug for Mapped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let of = std::any::type_name::<T>();
        write!(f, "Mapped<{of}>({} + {} values)", self.offset, self.len)
    }
}

/// Slots in anonymous memory, and their indexes beside them: a flow table
/// that outlives nothing (the benchmarks').
impl FlowMemory for Mapped<Slot> {
    type Array<T: Pod + fmt::Debug> = Mapped<T>;

    fn zeroed<T: Pod + fmt::Debug>(len: usize) -> Mapped<T> {
        Mapped::anon(len)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    #[test]
    fn anonymous_values_start_zeroed_and_keep_what_is_written() {
        let mut values = Mapped::<u64>::anon(100_000);
        assert_eq!(values.len(), 100_000);
        assert!(values.iter().all(|&v| v == 0));
        for (i, v) in values.iter_mut().enumerate() {
            *v = i as u64 * 3;
        }
        assert!(values.iter().enumerate().all(|(i, &v)| v == i as u64 * 3));
    }

    #[test]
    fn a_file_holds_its_head_then_its_values() {
        let path = std::env::temp_dir().join(format!("rialto-shm-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(4096 + 3 * 4).unwrap();
        let mut values = Mapped::<u32>::file(&file, 4096, 3).unwrap();
        values.head_mut()[0] = 0xaa;
        values.copy_from_slice(&[1, 2, 0xdead_beef]);
        drop(values);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(bytes[0], 0xaa);
        assert_eq!(bytes[4096..4100], 1u32.to_ne_bytes());
        assert_eq!(bytes[4104..], 0xdead_beef_u32.to_ne_bytes());
    }

    #[test]
    #[should_panic(expected = "aligned inside the mapping")]
    fn values_past_the_mapping_are_refused() {
        let map = MmapMut::map_anon(4096).unwrap();
        Mapped::<u32>::new(map, 4, 1024);
    }
}
