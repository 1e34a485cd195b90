//! A file mapped shared into memory: where the flow tables live, so that
//! they outlive the process ([`crate::state`]).
//!
//! With the AF_XDP rings and UMEM ([`crate::afxdp`]), the only `unsafe`
//! code of the appliance: mapping a file.

use std::{
    fs::File,
    ops::{Deref, DerefMut},
};

use memmap2::MmapMut;

/// `len` bytes of a file, mapped shared and writable.
#[derive(Debug)]
pub struct SharedMap(MmapMut);

impl SharedMap {
    /// Maps the first `len` bytes of `file`, which must have them.
    pub fn new(file: &File, len: usize) -> std::io::Result<Self> {
        // SAFETY: the file is one of the state directory's, which this
        // process holds locked (`StateDir::open`): no other Rialto maps or
        // truncates it meanwhile, and it was sized to `len` before. What it
        // holds is only ever read as plain-old-data (`bytemuck`), so any
        // bytes found there are valid values.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(file)? };
        Ok(Self(map))
    }
}

impl Deref for SharedMap {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for SharedMap {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}
