//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, §3.4).
//!
//! Per service, a lookup table of prime size M maps `flow_hash % M` to a
//! backend. Each backend walks its own permutation of the slots, `offset,
//! offset + skip, offset + 2·skip, …` (mod M), where `offset = h1 % M` and
//! `skip = h2 % (M − 1) + 1` come from two hashes of the backend's identity; M
//! prime makes every skip coprime with M, so every walk visits every slot.
//! Backends take turns, each claiming the next still-empty slot of its own
//! walk, until all M slots are taken (the paper's Pseudocode 1). Exactly M
//! turns are taken, one slot each, so a backend's share is its share of turns.
//!
//! The table depends only on the backend *set* (endpoints and weights), never
//! on the order the caller lists it in: both modes sort by identity first. The
//! slot values are nonetheless indices into the caller's slice, so the caller
//! maps them back with no lookup. A backend of weight 0 takes no turns and so
//! owns no slot (draining); at least one backend must have a positive weight.
//!
//! The table ([`Table`], `table.rs`) is what the dataplane indexes. The
//! population loop (`fill.rs`) builds it from the permutations and turn
//! order of one of two modes: Rialto's own (`rialto.rs`) or Cilium's
//! (`cilium.rs`). `backend.rs` reads backends as the CLI writes them,
//! `render.rs` prints a table, and `tests.rs` tests all of them.

mod backend;
mod cilium;
mod fill;
mod render;
mod rialto;
mod table;
#[cfg(test)]
mod tests;

use std::{fmt, str::FromStr};

pub use backend::{ParseBackendError, WeightedBackend};
pub use cilium::{CiliumSeed, ParseSeedError};
pub use render::render;
pub use table::Table;

use crate::Endpoint;

/// The paper's M: a prime, and over 100 × N for N up to 655 backends (§3.4:
/// M > 100·N keeps shares within 1%).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Cilium's default `bpf-lb-maglev-table-size`: the default of Cilium mode.
pub const CILIUM_DEFAULT_TABLE_SIZE: u32 = 16381;

/// The largest table Rialto builds: 2²⁴ slots, 64 MiB of `u32`.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

/// The table sizes Cilium accepts (`maglevSupportedTableSizes`); its default
/// is 16381.
pub const CILIUM_TABLE_SIZES: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];

/// Cilium's default `bpf-lb-maglev-hash-seed` (`DefaultHashSeed`).
pub const CILIUM_DEFAULT_HASH_SEED: &str = "JLfvgnHc2kaSUFaI";

/// Rialto mode's MurmurHash3 seed: `"Rial"` in ASCII. Frozen: changing it
/// reshuffles every table.
pub const RIALTO_SEED: u32 = u32::from_be_bytes(*b"Rial");

/// The slack of the bound on extra moves (module doc, "Disruption"): when
/// a backend of weight `w` is removed, at most `(w/W + 0.015)·M` slots change
/// hands between surviving backends. Asserted by the property test.
pub const REMOVAL_EXTRA_MOVES_SLACK: f64 = 0.015;

/// How backends are hashed and weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MaglevHash {
    /// Rialto's own identity bytes, seed and weighting (module doc).
    #[default]
    Rialto,
    /// Cilium's `pkg/maglev`, with its default seed (module doc).
    Cilium,
}

/// A hash mode other than `rialto` or `cilium`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Maglev hash {0:?}: expected rialto or cilium")]
pub struct ParseHashError(pub String);

impl MaglevHash {
    /// The table size used when none is given: Cilium mode takes Cilium's.
    pub const fn default_table_size(self) -> u32 {
        match self {
            Self::Rialto => DEFAULT_TABLE_SIZE,
            Self::Cilium => CILIUM_DEFAULT_TABLE_SIZE,
        }
    }
}

impl FromStr for MaglevHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rialto" => Ok(Self::Rialto),
            "cilium" => Ok(Self::Cilium),
            _ => Err(ParseHashError(s.to_owned())),
        }
    }
}

impl fmt::Display for MaglevHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rialto => "rialto",
            Self::Cilium => "cilium",
        })
    }
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// M must be prime for every skip to visit every slot.
    #[error("table size {size} is not prime")]
    NotPrime { size: u32 },
    /// M is above [`MAX_TABLE_SIZE`].
    #[error("table size {size} is above the maximum {max}")]
    TooLarge { size: u32, max: u32 },
    /// Cilium mode with a size no Cilium agent accepts.
    #[error("Cilium accepts table sizes {CILIUM_TABLE_SIZES:?} only, not {size}")]
    NotCiliumSize { size: u32 },
    #[error("no backends")]
    NoBackends,
    #[error("every backend has weight 0; at least one must have a positive weight")]
    ZeroTotalWeight,
    /// More backends than slots (N must be at most M).
    #[error("{backends} backends do not fit a table of {size} slots")]
    TooManyBackends { backends: usize, size: u32 },
    #[error(
        "backend {endpoint} is in two scopes (clusters); Cilium mode tells backends apart \
         by address and port only"
    )]
    CiliumSameEndpoint { endpoint: Endpoint },
    #[error("backend {endpoint} is listed twice")]
    DuplicateBackend { endpoint: Endpoint },
    /// Cilium's weights are `uint16`.
    #[error(
        "backend {endpoint} has weight {weight}, above Cilium's maximum {}",
        u16::MAX
    )]
    CiliumWeightTooLarge { endpoint: Endpoint, weight: u32 },
}

/// Building a table is the modes' business; the table itself only indexes.
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
}

/// Whether `n` is prime (trial division by 6k ± 1: at most ~11k steps for
/// a `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// Whether `size` can be the size of a table built with `hash`, whatever
/// the backends: a prime up to [`MAX_TABLE_SIZE`], in Cilium mode one of
/// [`CILIUM_TABLE_SIZES`].
pub fn check_size(hash: MaglevHash, size: u32) -> Result<(), MaglevError> {
    if hash == MaglevHash::Cilium && !CILIUM_TABLE_SIZES.contains(&size) {
        return Err(MaglevError::NotCiliumSize { size });
    }
    if size > MAX_TABLE_SIZE {
        return Err(MaglevError::TooLarge {
            size,
            max: MAX_TABLE_SIZE,
        });
    }
    if !is_prime(size) {
        return Err(MaglevError::NotPrime { size });
    }
    Ok(())
}

/// The checks both modes share. Duplicates are looked for among all
/// backends, drained ones included.
fn validate(size: u32, backends: &[WeightedBackend]) -> Result<(), MaglevError> {
    if backends.is_empty() {
        return Err(MaglevError::NoBackends);
    }
    if backends.len() > size as usize {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
            size,
        });
    }
    if backends.iter().all(|b| b.weight == 0) {
        return Err(MaglevError::ZeroTotalWeight);
    }
    let mut endpoints: Vec<(Endpoint, Option<u32>)> = backends.iter().map(|b| b.key()).collect();
    endpoints.sort_unstable();
    if let Some(pair) = endpoints.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(MaglevError::DuplicateBackend {
            endpoint: pair[0].0,
        });
    }
    Ok(())
}
