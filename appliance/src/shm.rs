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
//! What backs a table's memory ([`backing`]: resident, in 2 MB pages or
//! not) is read from `/proc/self/smaps` for the metrics.
//!
//! With the AF_XDP rings and UMEM ([`crate::afxdp`]), the only `unsafe`
//! code of the appliance: mapping a file, and reading a mapping as the
//! values it holds, once checked, not on each access (`bytemuck`'s checked
//! cast on every access cost about 100 instructions a packet).

use std::{
    fmt,
    fs::File,
    marker::PhantomData,
    ops::{Deref, DerefMut, Range},
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

/// What backs some of this process's memory (a flow table's), from
/// `/proc/self/smaps`: its bytes, those resident, and of those the ones
/// in 2 MB pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backing {
    pub bytes: u64,
    pub resident: u64,
    pub huge: u64,
}

/// This process's mappings as `/proc/self/smaps` lists them (`None` if it
/// cannot be read). Reading it walks every mapping's pages: once for all
/// the workers, when the status is asked for.
pub fn mappings() -> Option<procfs::process::MemoryMaps> {
    procfs::process::Process::myself().ok()?.smaps().ok()
}

/// What backs `ranges` of this process's memory, as `maps` says. A
/// mapping's figures count for the share of it inside the ranges: the
/// kernel may merge one mapping with its neighbour (two indexes' arrays,
/// mapped one after the other with the same advice), and smaps then shows
/// one entry for both.
pub fn backing(maps: &procfs::process::MemoryMaps, ranges: &[Range<usize>]) -> Backing {
    let mut b = Backing {
        bytes: ranges.iter().map(|r| r.len() as u64).sum(),
        ..Backing::default()
    };
    for map in &maps.0 {
        let (start, end) = map.address;
        let inside: u64 = ranges
            .iter()
            .map(|r| (end.min(r.end as u64)).saturating_sub(start.max(r.start as u64)))
            .sum();
        if inside == 0 {
            continue;
        }
        let share = |keys: &[&str]| -> u64 {
            let total: u64 = keys.iter().filter_map(|k| map.extension.map.get(*k)).sum();
            // In u128: a mapping's bytes times its size may pass 2^64.
            (u128::from(total) * u128::from(inside) / u128::from(end - start)) as u64
        };
        b.resident += share(&["Rss"]);
        // Anonymous memory's transparent huge pages; a huge tmpfs's (or a
        // file's) mapped by 2 MB entries.
        b.huge += share(&["AnonHugePages", "ShmemPmdMapped", "FilePmdMapped"]);
    }
    b
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use rialto_testbed::Tmpfs;

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

    /// The file at `path`, made anew, of `bytes` zeroes, open to read and
    /// write.
    fn sized(path: &std::path::Path, bytes: usize) -> std::fs::File {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        file.set_len(bytes as u64).unwrap();
        file
    }

    #[test]
    fn a_file_holds_its_head_then_its_values() {
        let path = std::env::temp_dir().join(format!("rialto-shm-{}", std::process::id()));
        let file = sized(&path, 4096 + 3 * 4);
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

    /// The bytes of `values`, as [`backing`] takes them.
    fn range_of<T>(values: &[T]) -> Range<usize> {
        let r = values.as_ptr_range();
        r.start.addr()..r.end.addr()
    }

    /// Writes every value, so that every page is resident.
    fn touch(values: &mut [u64]) {
        for (i, v) in values.iter_mut().enumerate() {
            *v = i as u64;
        }
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn anonymous_values_advised_to_huge_pages_get_them() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").expect(
            "/sys/kernel/mm/transparent_hugepage/enabled: a kernel with transparent huge pages",
        );
        assert!(
            !thp.contains("[never]"),
            "transparent huge pages are off on this machine ({}): the flow tables' indexes get none",
            thp.trim()
        );
        let mut values = Mapped::<u64>::anon(64 * MIB / 8);
        touch(&mut values);
        let b = backing(&mappings().expect("/proc/self/smaps"), &[range_of(&values)]);
        assert_eq!(
            (b.bytes, b.resident),
            (64 * MIB as u64, 64 * MIB as u64),
            "{b:?}"
        );
        // The 2 MB extents inside the mapping: all but the edges' if it is
        // not aligned to 2 MB.
        assert!(b.huge >= 60 * MIB as u64, "{b:?}");
    }

    /// What backs a file of `bytes` in `dir`, mapped and written.
    fn file_backing(dir: &std::path::Path, bytes: usize) -> Backing {
        let path = dir.join(format!("rialto-backing-{}", std::process::id()));
        let file = sized(&path, bytes);
        std::fs::remove_file(&path).unwrap();
        let mut values = Mapped::<u64>::file(&file, 0, bytes / 8).unwrap();
        touch(&mut values);
        backing(&mappings().expect("/proc/self/smaps"), &[range_of(&values)])
    }

    #[test]
    fn a_file_is_mapped_in_huge_pages_on_a_huge_tmpfs_only() {
        let huge = Tmpfs::mount("huge=within_size,size=64m,mode=0700");
        let b = file_backing(&huge.dir, 16 * MIB);
        assert_eq!(
            (b.bytes, b.resident),
            (16 * MIB as u64, 16 * MIB as u64),
            "{b:?}"
        );
        assert!(b.huge >= 12 * MIB as u64, "on huge=within_size: {b:?}");
        let plain = Tmpfs::mount("size=64m,mode=0700");
        let b = file_backing(&plain.dir, 16 * MIB);
        assert_eq!(
            (b.resident, b.huge),
            (16 * MIB as u64, 0),
            "without huge=: {b:?}"
        );
    }

    #[test]
    #[should_panic(expected = "aligned inside the mapping")]
    fn values_past_the_mapping_are_refused() {
        let map = MmapMut::map_anon(4096).unwrap();
        Mapped::<u32>::new(map, 4, 1024);
    }
}
