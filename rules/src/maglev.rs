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
//! # Rialto mode ([`MaglevHash::Rialto`])
//!
//! - **Identity**: the bytes `[family (4 or 6), address octets…, port (big
//!   endian, 2 bytes), IP protocol number]`. `h1, h2` are the two halves of
//!   MurmurHash3 x64-128 of them with the seed [`RIALTO_SEED`]. Changing either
//!   moves every table: both are frozen.
//! - **Weights**: the paper leaves weighting open ("altering the relative
//!   frequency of the backends' turns"). Here the `k`-th turn (from 0) of a
//!   backend of weight `w` is due at virtual time `(k + ½) / w`; turns are taken
//!   in order of due time, ties going to the heavier weight, then to identity
//!   order. With equal weights this is the paper's round robin, and every
//!   backend holds ⌊M/N⌋ or ⌈M/N⌉ slots. In general a backend of weight `w`
//!   holds within `1.5·(1 + N·w/W)` slots of `M·w/W` (`W` the total weight):
//!   ±½ turn of rounding plus ±1 of the last, partial round, for it and, through
//!   the stopping time, for everyone (the tests assert this). A weight change
//!   only re-times turns; it re-hashes no one.
//! - **Disruption**: removing one of N backends hands its slots to the
//!   others, and also moves some slots between survivors: the turn order
//!   shifts, and two backends that drew the same skip walk the same cycle, so
//!   a removal can shift their interleaving. Over 50,000 random removals
//!   (M = 65537, N from 2 to 1000, weights 1 to 4) these extra moves averaged
//!   0.36% of M for N ≤ 64 and 0.74% for larger N; the worst was 6.2% of M (a
//!   skip collision among few backends), and none exceeded the removed
//!   backend's own share plus 1.1% of M. The property test
//!   `removal_moves_only_the_removed_backends_slots` asserts extra moves ≤
//!   `(w/W + REMOVAL_EXTRA_MOVES_SLACK)·M`, the slack being 1.5%.
//!
//! # Cilium mode ([`MaglevHash::Cilium`], [`Table::build_cilium`])
//!
//! Bit for bit the table of Cilium's agent, so a fleet mixing Cilium and
//! Rialto nodes maps a slot to the same backend. Followed: `pkg/maglev/maglev.go`
//! of `cilium/cilium` (the `BackendInfo.setHashString` / `computeLookupTable`
//! version of the new load-balancer control plane) and `pkg/murmur3/murmur3.go`;
//! the golden tests below are `pkg/maglev/maglev_test.go`'s `TestReproducible`
//! and `TestWeightedBackendWithRemoval`.
//!
//! - **Identity**: the string `[ADDR:PORT/PROTO,State:active]` (IPv6 as
//!   `[[ADDR]:PORT/PROTO,State:active]`, the address in RFC 5952 form, which
//!   Go's `netip` and Rust print alike). Backends are sorted by these strings
//!   bytewise, as Go's `cmp.Compare` on strings does.
//! - **Hash**: MurmurHash3 x64-128 of that string with `seedMurmur`, the
//!   first 4 bytes (big endian) of the 12-byte base64 seed
//!   `--bpf-lb-maglev-hash-seed` (default [`CILIUM_DEFAULT_HASH_SEED`]);
//!   `offset = h1 % M`, `skip = h2 % (M − 1) + 1`.
//! - **Weights**: Cilium's scheme, including its float counters: with `l`
//!   backends, `W` their weight sum, each backend starts a counter at `w / l`;
//!   turn `n` starts at backend `n % l` and passes on while
//!   `(n + 1)·w < ⌊counter⌋`; the backend that takes the turn adds `W` to its
//!   counter. Weights count only when `W / l > 1` (integer division): with
//!   weights averaging under 2, say 1 and 2, Cilium shares equally, and so
//!   does this mode. Write weights on Cilium's scale: 16 bit, default 100
//!   (`loadbalancer.DefaultBackendWeight`); all-equal weights, whatever their
//!   value, give the same table. Weight 0 is Cilium's maintenance state,
//!   which it leaves out of the Maglev table, as Rialto does.
//!
//! For two nodes to agree, the Cilium side needs: the same seed
//! (`bpf-lb-maglev-hash-seed`), the same M (`bpf-lb-maglev-table-size`, one of
//! [`CILIUM_TABLE_SIZES`]; [`DEFAULT_TABLE_SIZE`] is not among them), and the
//! same backend set with the same weights. Cilium builds the table from its
//! active backends only (its terminating ones when none is active), and
//! hashes backends as external-scope, cluster ID 0 addresses: backends
//! seen with a cluster ID (ClusterMesh, `ADDR@ID`) hash differently and are
//! not reproduced here. Picking the same backend *for a flow* additionally
//! needs the same flow hash: Cilium's datapath indexes its table with a jhash
//! of the tuple (`bpf/lib/hash.h`), which is the dataplane's business, not
//! this module's. Cilium releases before this hash string was introduced
//! keyed backends by `Backend.String()`; the Go comment says the string
//! reproduces it, which could not be checked against each release.

use std::{cmp::Reverse, collections::BinaryHeap, fmt, str::FromStr};

use crate::{Endpoint, ParseEndpointError};

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

/// Cilium's `bpf-lb-maglev-hash-seed`: 12 bytes, written in standard base64.
/// Only the first 4 (big endian) seed the table's hash; Cilium derives
/// `SeedJhash0` and `SeedJhash1`, for its datapath, from the other 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CiliumSeed([u8; 12]);

/// Why a Cilium seed was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Cilium Maglev seed: expected 12 bytes in standard base64 (16 characters)")]
pub struct ParseSeedError(pub String);

impl CiliumSeed {
    /// [`CILIUM_DEFAULT_HASH_SEED`], decoded.
    pub const DEFAULT: Self = match Self::decode(CILIUM_DEFAULT_HASH_SEED.as_bytes()) {
        Some(seed) => seed,
        None => panic!("CILIUM_DEFAULT_HASH_SEED is not 12 bytes of base64"),
    };

    /// The seed of the table's MurmurHash3 (`seedMurmur`).
    pub const fn murmur(self) -> u32 {
        let b = self.0;
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Exactly 16 characters of the standard alphabet: what Go's
    /// `base64.StdEncoding` decodes to 12 bytes (padding would mean fewer).
    const fn decode(text: &[u8]) -> Option<Self> {
        if text.len() != 16 {
            return None;
        }
        let mut bytes = [0u8; 12];
        let mut group = 0;
        while group < 4 {
            let mut bits = 0u32;
            let mut i = 0;
            while i < 4 {
                let sextet = match text[group * 4 + i] {
                    c @ b'A'..=b'Z' => c - b'A',
                    c @ b'a'..=b'z' => c - b'a' + 26,
                    c @ b'0'..=b'9' => c - b'0' + 52,
                    b'+' => 62,
                    b'/' => 63,
                    _ => return None,
                };
                bits = bits << 6 | sextet as u32;
                i += 1;
            }
            let [_, b0, b1, b2] = bits.to_be_bytes();
            bytes[group * 3] = b0;
            bytes[group * 3 + 1] = b1;
            bytes[group * 3 + 2] = b2;
            group += 1;
        }
        Some(Self(bytes))
    }
}

impl Default for CiliumSeed {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FromStr for CiliumSeed {
    type Err = ParseSeedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::decode(s.as_bytes()).ok_or_else(|| ParseSeedError(s.to_owned()))
    }
}

/// A backend and its weight: `198.19.0.5:8080/TCP=3`, `[fd00::5]:80/TCP`
/// (weight 1 when omitted; 0 drains it), `198.19.0.5:8080/TCP@100=3` (in
/// scope 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightedBackend {
    pub endpoint: Endpoint,
    pub weight: u32,
    /// Tells apart backends with the same endpoint: Rialto's config puts
    /// each backend in its cluster's VNI, as two clusters may use the same
    /// pod addresses. Part of the identity in Rialto mode; Cilium mode
    /// knows no scopes and refuses an endpoint listed in two.
    pub scope: Option<u32>,
}

impl WeightedBackend {
    /// What tells backends apart, in identity order.
    fn key(&self) -> (Endpoint, Option<u32>) {
        (self.endpoint, self.scope)
    }
}

/// Why an `ADDR:PORT/PROTO[@SCOPE][=WEIGHT]` string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseBackendError {
    /// The part before `=` is not an endpoint.
    #[error(transparent)]
    Endpoint(#[from] ParseEndpointError),
    /// The part after `=` is not a `u32`.
    #[error("weight {weight:?} is not a whole number from 0 to {}", u32::MAX)]
    BadWeight { weight: String },
    /// The part after `@` is not a `u32`.
    #[error("scope {scope:?} is not a whole number from 0 to {}", u32::MAX)]
    BadScope { scope: String },
}

impl FromStr for WeightedBackend {
    type Err = ParseBackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (endpoint, weight) = match s.rsplit_once('=') {
            Some((endpoint, weight)) => {
                let weight = weight.parse().map_err(|_| ParseBackendError::BadWeight {
                    weight: weight.to_owned(),
                })?;
                (endpoint, weight)
            }
            None => (s, 1),
        };
        let (endpoint, scope) = match endpoint.rsplit_once('@') {
            Some((endpoint, scope)) => {
                let scope = scope.parse().map_err(|_| ParseBackendError::BadScope {
                    scope: scope.to_owned(),
                })?;
                (endpoint, Some(scope))
            }
            None => (endpoint, None),
        };
        Ok(Self {
            endpoint: endpoint.parse()?,
            weight,
            scope,
        })
    }
}

impl fmt::Display for WeightedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.endpoint)?;
        if let Some(scope) = self.scope {
            write!(f, "@{scope}")?;
        }
        write!(f, "={}", self.weight)
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

/// A service's Maglev lookup table.
#[derive(Clone, PartialEq, Eq)]
pub struct Table {
    slots: Box<[u32]>,
    /// How many backends the table was built from (the slice's length).
    backends: usize,
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
            MaglevHash::Rialto => Self::build_rialto(size, backends),
            MaglevHash::Cilium => Self::build_cilium(CiliumSeed::DEFAULT, size, backends),
        }
    }

    /// Cilium mode with a non-default `bpf-lb-maglev-hash-seed`.
    pub fn build_cilium(
        seed: CiliumSeed,
        size: u32,
        backends: &[WeightedBackend],
    ) -> Result<Self, MaglevError> {
        check_size(MaglevHash::Cilium, size)?;
        validate(size, backends)?;
        let mut endpoints: Vec<Endpoint> = backends.iter().map(|b| b.endpoint).collect();
        endpoints.sort_unstable();
        if let Some(pair) = endpoints.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(MaglevError::CiliumSameEndpoint { endpoint: pair[0] });
        }
        if let Some(b) = backends.iter().find(|b| b.weight > u32::from(u16::MAX)) {
            return Err(MaglevError::CiliumWeightTooLarge {
                endpoint: b.endpoint,
                weight: b.weight,
            });
        }
        // Cilium keeps backends of weight 0 (maintenance) out of the table.
        let mut active: Vec<(String, u32)> = backends
            .iter()
            .zip(0..)
            .filter(|(b, _)| b.weight > 0)
            .map(|(b, index)| (format!("[{},State:active]", b.endpoint), index))
            .collect();
        active.sort_unstable();

        let m = u64::from(size);
        let mut fill = Fill::new(size, backends.len());
        let mut weights = Vec::with_capacity(active.len());
        for (key, index) in &active {
            let (h1, h2) = mur3::murmurhash3_x64_128(key.as_bytes(), seed.murmur());
            fill.add(h1 % m, h2 % (m - 1) + 1, *index);
            weights.push(u64::from(backends[*index as usize].weight));
        }

        let l = weights.len();
        let weight_sum: u64 = weights.iter().sum();
        let weights_used = weight_sum / l as u64 > 1;
        let mut counters: Vec<f64> = weights.iter().map(|&w| w as f64 / l as f64).collect();
        // Turn n starts at backend n % l; `start` keeps that without a
        // division per turn.
        let mut start = 0;
        for n in 0..m {
            let mut i = start;
            start = if start + 1 == l { 0 } else { start + 1 };
            if weights_used {
                // Go's `uint64(weightCntr[i])` truncates, as `as` does.
                while (n + 1) * weights[i] < counters[i] as u64 {
                    i = if i + 1 == l { 0 } else { i + 1 };
                }
                counters[i] += weight_sum as f64;
            }
            fill.turn(i);
        }
        Ok(fill.finish())
    }

    fn build_rialto(size: u32, backends: &[WeightedBackend]) -> Result<Self, MaglevError> {
        check_size(MaglevHash::Rialto, size)?;
        validate(size, backends)?;
        // Identity order (`Endpoint`'s `Ord`); `validate` has ruled out ties.
        let mut active: Vec<u32> = (0..)
            .zip(backends)
            .filter(|(_, b)| b.weight > 0)
            .map(|(index, _)| index)
            .collect();
        active.sort_unstable_by_key(|&i| backends[i as usize].key());

        let m = u64::from(size);
        let mut fill = Fill::new(size, backends.len());
        for &index in &active {
            let (h1, h2) =
                mur3::murmurhash3_x64_128(&rialto_identity(&backends[index as usize]), RIALTO_SEED);
            fill.add(h1 % m, h2 % (m - 1) + 1, index);
        }

        // One class per distinct weight, heaviest first; members in identity
        // order. A class's `k`-th round is due at (k + ½) / w, i.e. compare
        // (2k + 1) / w across classes.
        let mut classes: Vec<(u32, Vec<usize>)> = Vec::new();
        let mut by_weight: Vec<usize> = (0..active.len()).collect();
        by_weight.sort_by_key(|&i| Reverse(backends[active[i] as usize].weight));
        for i in by_weight {
            let w = backends[active[i] as usize].weight;
            match classes.last_mut() {
                Some((cw, members)) if *cw == w => members.push(i),
                _ => classes.push((w, vec![i])),
            }
        }
        let mut due: BinaryHeap<Reverse<Due>> = classes
            .iter()
            .zip(0..)
            .map(|(&(weight, _), class)| {
                Reverse(Due {
                    twice_k_plus_1: 1,
                    weight: u64::from(weight),
                    class,
                })
            })
            .collect();
        let mut turns = 0;
        loop {
            let mut next = due.peek_mut().expect("one entry per class, never popped");
            for &i in &classes[next.0.class].1 {
                if turns == size {
                    return Ok(fill.finish());
                }
                fill.turn(i);
                turns += 1;
            }
            next.0.twice_k_plus_1 += 2;
        }
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

/// The table for `rialto maglev`: one line per slot, `{slot}\t{endpoint}`.
///
/// # Panics
///
/// If `backends` is not the slice `table` was built from (a different
/// length).
pub fn render(table: &Table, backends: &[WeightedBackend]) -> String {
    use fmt::Write as _;

    assert_eq!(
        table.backends,
        backends.len(),
        "render needs the backends the table was built from"
    );
    let mut out = String::with_capacity(table.slots.len() * 24);
    for (slot, &index) in table.slots.iter().enumerate() {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{slot}\t{}", backends[index as usize].endpoint);
    }
    out
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

/// The checks both modes share. Duplicates are looked for among all
/// backends, drained ones included.
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

/// Rialto mode's identity bytes: family, address, port (big endian), IP
/// protocol number, then the scope (big endian) if there is one.
fn rialto_identity(backend: &WeightedBackend) -> Vec<u8> {
    let endpoint = backend.endpoint;
    let mut bytes = Vec::with_capacity(24);
    match endpoint.addr {
        std::net::IpAddr::V4(a) => {
            bytes.push(4);
            bytes.extend_from_slice(&a.octets());
        }
        std::net::IpAddr::V6(a) => {
            bytes.push(6);
            bytes.extend_from_slice(&a.octets());
        }
    }
    bytes.extend_from_slice(&endpoint.port.to_be_bytes());
    bytes.push(endpoint.proto.number());
    if let Some(scope) = backend.scope {
        bytes.extend_from_slice(&scope.to_be_bytes());
    }
    bytes
}

/// When a Rialto weight class's next round is due: `(2k + 1) / weight`,
/// compared exactly by cross-multiplying (`2k + 1` is below 2²⁶ as k < M,
/// the weight below 2³², so the products fit a `u64`). Ties go to the lower
/// class index, i.e. the heavier weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Due {
    twice_k_plus_1: u64,
    weight: u64,
    class: usize,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.twice_k_plus_1 * other.weight)
            .cmp(&(other.twice_k_plus_1 * self.weight))
            .then(self.class.cmp(&other.class))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

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
struct Fill {
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
    fn new(m: u32, backends: usize) -> Self {
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
    fn add(&mut self, offset: u64, skip: u64, index: u32) {
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
    fn turn(&mut self, i: usize) {
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

    fn finish(self) -> Table {
        debug_assert!(self.left == 0 && self.free.is_empty());
        Table {
            slots: self.slots.into_boxed_slice(),
            backends: self.backends,
        }
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::Proto;

    fn backend(s: &str) -> WeightedBackend {
        s.parse().unwrap()
    }

    /// `n` distinct backends 10.0.x.y:8080/TCP of weight 1.
    fn backends(n: u32) -> Vec<WeightedBackend> {
        (0..n)
            .map(|i| WeightedBackend {
                endpoint: Endpoint {
                    addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                    port: 8080,
                    proto: Proto::Tcp,
                },
                weight: 1,
                scope: None,
            })
            .collect()
    }

    /// SplitMix64, for deterministic shuffles and weights.
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn shuffled(backends: &[WeightedBackend], seed: u64) -> Vec<WeightedBackend> {
        let mut state = seed;
        let mut out = backends.to_vec();
        for i in (1..out.len()).rev() {
            out.swap(i, (splitmix(&mut state) % (i as u64 + 1)) as usize);
        }
        out
    }

    /// The table as endpoints, independent of the slice order.
    fn endpoints(table: &Table, backends: &[WeightedBackend]) -> Vec<Endpoint> {
        table
            .slots()
            .iter()
            .map(|&i| backends[i as usize].endpoint)
            .collect()
    }

    #[test]
    fn scopes_tell_apart_one_endpoint_in_two_clusters() {
        let bs = [
            backend("198.19.0.5:8080/TCP@100"),
            backend("198.19.0.5:8080/TCP@200"),
        ];
        assert_eq!(bs[1].to_string(), "198.19.0.5:8080/TCP@200=1");
        let table = Table::build(MaglevHash::Rialto, 251, &bs).unwrap();
        assert!(
            table.slot_counts().iter().all(|&n| n > 100),
            "both get a share"
        );
        assert_eq!(
            Table::build(MaglevHash::Cilium, 251, &bs),
            Err(MaglevError::CiliumSameEndpoint {
                endpoint: bs[0].endpoint
            })
        );
        let twice = [bs[0], bs[0]];
        assert!(matches!(
            Table::build(MaglevHash::Rialto, 251, &twice),
            Err(MaglevError::DuplicateBackend { .. })
        ));
    }

    #[test]
    fn every_slot_is_filled_with_a_valid_index() {
        for hash in [MaglevHash::Rialto, MaglevHash::Cilium] {
            for n in [1, 2, 3, 10, 100, 1000] {
                let bs = backends(n);
                let table = Table::build(hash, 65521, &bs).unwrap();
                assert_eq!(table.size(), 65521);
                assert_eq!(table.slots().len(), 65521);
                assert!(table.slots().iter().all(|&i| i < n));
                let counts = table.slot_counts();
                assert_eq!(counts.iter().sum::<u32>(), 65521);
                // Equal weights: the paper's round robin, so every backend
                // holds ⌊M/N⌋ or ⌈M/N⌉ slots.
                let (lo, hi) = (65521 / n, 65521_u32.div_ceil(n));
                assert!(counts.iter().all(|&c| (lo..=hi).contains(&c)), "{hash} {n}");
            }
        }
    }

    /// Rialto mode: each backend within 1.5·(1 + N·w/W) slots of M·w/W.
    #[test]
    fn shares_follow_weights() {
        let mut state = 7;
        let random: Vec<u32> = (0..200)
            .map(|_| 1 + (splitmix(&mut state) % 100) as u32)
            .collect();
        let skewed: Vec<u32> = (0..100).map(|i| if i == 0 { 1000 } else { 1 }).collect();
        let cases: [&[u32]; 5] = [
            &[1, 2, 3, 4, 10],
            &[3, 0, 1, 0, 7],
            &[100, 150, 150, 200, 1],
            &random,
            &skewed,
        ];
        for weights in cases {
            let mut bs = backends(weights.len() as u32);
            for (b, &w) in bs.iter_mut().zip(weights) {
                b.weight = w;
            }
            let total: u32 = weights.iter().sum();
            for size in [DEFAULT_TABLE_SIZE, 4099] {
                let counts = Table::build(MaglevHash::Rialto, size, &bs)
                    .unwrap()
                    .slot_counts();
                let n = weights.len() as f64;
                for (&count, &w) in counts.iter().zip(weights) {
                    let share = f64::from(w) / f64::from(total);
                    let ideal = f64::from(size) * share;
                    assert!(
                        (f64::from(count) - ideal).abs() <= 1.5 * (1.0 + n * share),
                        "M={size} w={w}: {count} slots, ideal {ideal:.1}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_table_does_not_depend_on_the_listing_order() {
        let mut bs = backends(50);
        bs.push(backend("[fd00::5]:80/TCP=3"));
        bs.push(backend("198.19.0.5:8080/UDP=2"));
        bs.push(backend("198.19.0.5:8080/TCP=0"));
        for (hash, size) in [
            (MaglevHash::Rialto, DEFAULT_TABLE_SIZE),
            (MaglevHash::Cilium, 16381),
        ] {
            let reference = endpoints(&Table::build(hash, size, &bs).unwrap(), &bs);
            for seed in 1..4 {
                let other = shuffled(&bs, seed);
                assert_ne!(other, bs);
                let table = Table::build(hash, size, &other).unwrap();
                assert_eq!(endpoints(&table, &other), reference, "{hash}");
            }
        }
    }

    /// A drained backend owns nothing and changes nothing for the others.
    #[test]
    fn weight_zero_drains() {
        let mut bs = backends(20);
        for (hash, size) in [(MaglevHash::Rialto, 4099), (MaglevHash::Cilium, 4093)] {
            let without = endpoints(&Table::build(hash, size, &bs[1..]).unwrap(), &bs[1..]);
            bs[0].weight = 0;
            let table = Table::build(hash, size, &bs).unwrap();
            assert_eq!(table.slot_counts()[0], 0);
            assert_eq!(endpoints(&table, &bs), without, "{hash}");
            bs[0].weight = 1;
        }
    }

    /// The paper's Pseudocode 1 taken literally (whole permutations and
    /// `next[]`), with Rialto's turn order found by sorting every backend's
    /// first M turns by due time: what `Table::build` computes faster.
    fn reference_rialto(size: u32, bs: &[WeightedBackend]) -> Vec<Endpoint> {
        let m = u64::from(size);
        let mut active: Vec<&WeightedBackend> = bs.iter().filter(|b| b.weight > 0).collect();
        active.sort_by_key(|b| b.key());
        let permutations: Vec<Vec<u64>> = active
            .iter()
            .map(|b| {
                let (h1, h2) = mur3::murmurhash3_x64_128(&rialto_identity(b), RIALTO_SEED);
                let (offset, skip) = (h1 % m, h2 % (m - 1) + 1);
                (0..m).map(|j| (offset + j * skip) % m).collect()
            })
            .collect();
        // (2k + 1, weight, identity rank): due at (2k + 1) / 2w, ties to the
        // heavier, then to identity order.
        let mut turns: Vec<(u64, u64, usize)> = active
            .iter()
            .enumerate()
            .flat_map(|(rank, b)| (0..m).map(move |k| (2 * k + 1, u64::from(b.weight), rank)))
            .collect();
        turns.sort_by(|a, b| {
            (a.0 * b.1)
                .cmp(&(b.0 * a.1))
                .then(b.1.cmp(&a.1))
                .then(a.2.cmp(&b.2))
        });
        let mut entry: Vec<Option<usize>> = vec![None; size as usize];
        let mut next = vec![0; active.len()];
        for &(_, _, i) in &turns[..size as usize] {
            let mut c = permutations[i][next[i]];
            while entry[c as usize].is_some() {
                next[i] += 1;
                c = permutations[i][next[i]];
            }
            entry[c as usize] = Some(i);
            next[i] += 1;
        }
        entry.iter().map(|i| active[i.unwrap()].endpoint).collect()
    }

    #[test]
    fn matches_the_papers_pseudocode() {
        let mut state = 3;
        for size in [2, 7, 251, 4099] {
            for n in [1, 2, 3, 20] {
                let equal = backends(n.min(size));
                let mut weighted = equal.clone();
                for b in &mut weighted {
                    b.weight = (splitmix(&mut state) % 5) as u32;
                }
                weighted[0].weight = 3;
                for bs in [&equal, &weighted] {
                    let table = Table::build(MaglevHash::Rialto, size, bs).unwrap();
                    assert_eq!(
                        endpoints(&table, bs),
                        reference_rialto(size, bs),
                        "M={size} N={n}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_hash_modes_differ() {
        let bs = backends(10);
        let rialto = Table::build(MaglevHash::Rialto, 65521, &bs).unwrap();
        let cilium = Table::build(MaglevHash::Cilium, 65521, &bs).unwrap();
        assert_ne!(rialto, cilium);
    }

    #[test]
    fn rejects_with_a_reason() {
        let bs = backends(3);
        let build = |size, bs: &[WeightedBackend]| Table::build(MaglevHash::Rialto, size, bs);
        assert_eq!(
            build(65536, &bs),
            Err(MaglevError::NotPrime { size: 65536 })
        );
        assert_eq!(build(1, &bs), Err(MaglevError::NotPrime { size: 1 }));
        assert_eq!(
            build(16_777_259, &bs),
            Err(MaglevError::TooLarge {
                size: 16_777_259,
                max: MAX_TABLE_SIZE
            })
        );
        assert_eq!(build(65537, &[]), Err(MaglevError::NoBackends));
        let drained: Vec<_> = bs
            .iter()
            .map(|b| WeightedBackend { weight: 0, ..*b })
            .collect();
        assert_eq!(build(65537, &drained), Err(MaglevError::ZeroTotalWeight));
        assert_eq!(
            build(2, &bs),
            Err(MaglevError::TooManyBackends {
                backends: 3,
                size: 2
            })
        );
        assert!(build(3, &bs).is_ok());
        let twice = [bs[0], bs[1], WeightedBackend { weight: 5, ..bs[0] }];
        assert_eq!(
            build(65537, &twice),
            Err(MaglevError::DuplicateBackend {
                endpoint: bs[0].endpoint
            })
        );
        assert_eq!(
            Table::build(MaglevHash::Cilium, 65537, &bs),
            Err(MaglevError::NotCiliumSize { size: 65537 })
        );
        let heavy = [WeightedBackend {
            weight: 65536,
            ..bs[0]
        }];
        assert_eq!(
            Table::build(MaglevHash::Cilium, 251, &heavy),
            Err(MaglevError::CiliumWeightTooLarge {
                endpoint: bs[0].endpoint,
                weight: 65536
            })
        );
        assert!(Table::build(MaglevHash::Rialto, 251, &heavy).is_ok());
    }

    #[test]
    fn parses_and_prints_weighted_backends() {
        let b = backend("198.19.0.5:8080/TCP=3");
        assert_eq!(b.endpoint, "198.19.0.5:8080/TCP".parse().unwrap());
        assert_eq!(b.weight, 3);
        assert_eq!(b.to_string(), "198.19.0.5:8080/TCP=3");
        let v6 = backend("[fd00::5]:80/TCP=2");
        assert_eq!(v6.endpoint.addr, "fd00::5".parse::<IpAddr>().unwrap());
        assert_eq!((v6.endpoint.port, v6.weight), (80, 2));
        assert_eq!(v6.to_string(), "[fd00::5]:80/TCP=2");
        assert_eq!(backend("[fd00::5]:53/udp").weight, 1);
        assert_eq!(backend("198.19.0.5:80/TCP=0").weight, 0);

        let err = |s: &str| s.parse::<WeightedBackend>().unwrap_err();
        for bad in ["x", "-1", "", "4294967296", "1.5"] {
            assert_eq!(
                err(&format!("198.19.0.5:80/TCP={bad}")),
                ParseBackendError::BadWeight { weight: bad.into() }
            );
        }
        assert_eq!(
            err("198.19.0.5:80=2"),
            ParseBackendError::Endpoint(ParseEndpointError::MissingProto("198.19.0.5:80".into()))
        );
    }

    #[test]
    fn parses_and_prints_hash_modes() {
        assert_eq!("rialto".parse(), Ok(MaglevHash::Rialto));
        assert_eq!("Cilium".parse(), Ok(MaglevHash::Cilium));
        assert_eq!(
            "maglev".parse::<MaglevHash>(),
            Err(ParseHashError("maglev".into()))
        );
        assert_eq!(MaglevHash::default(), MaglevHash::Rialto);
        for hash in [MaglevHash::Rialto, MaglevHash::Cilium] {
            assert_eq!(hash.to_string().parse(), Ok(hash));
        }
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..60).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            small,
            [
                2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59
            ]
        );
        assert!(CILIUM_TABLE_SIZES.iter().all(|&m| is_prime(m)));
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        assert!(is_prime(4_294_967_291)); // the largest u32 prime
        assert!(!is_prime(65537 * 65521));
        assert!(!is_prime(u32::MAX));
    }

    #[test]
    fn renders_one_line_per_slot() {
        let bs = [
            backend("198.19.0.5:8080/TCP=3"),
            backend("[fd00::5]:80/UDP"),
        ];
        let table = Table::build(MaglevHash::Rialto, 7, &bs).unwrap();
        let text = render(&table, &bs);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7);
        for (slot, line) in lines.iter().enumerate() {
            let endpoint = bs[table.slots()[slot] as usize].endpoint;
            assert_eq!(*line, format!("{slot}\t{endpoint}"));
        }
        assert!(text.contains("\t198.19.0.5:8080/TCP\n"));
        assert!(text.contains("\t[fd00::5]:80/UDP\n"));
    }

    #[test]
    fn lookup_reduces_the_flow_hash_mod_m() {
        let bs = backends(5);
        let table = Table::build(MaglevHash::Rialto, 251, &bs).unwrap();
        for hash in [0, 1, 250, 251, 252, u64::MAX] {
            assert_eq!(table.lookup(hash), table.slots()[(hash % 251) as usize]);
        }
    }

    /// Reference vectors of MurmurHash3_x64_128 (smhasher's), to pin the crate.
    #[test]
    fn murmur3_x64_128_matches_the_reference() {
        assert_eq!(mur3::murmurhash3_x64_128(b"", 0), (0, 0));
        assert_eq!(
            mur3::murmurhash3_x64_128(b"hello", 0),
            (0xcbd8_a7b3_41bd_9b02, 0x5b1e_906a_48ae_1d19)
        );
        assert_eq!(
            mur3::murmurhash3_x64_128(b"The quick brown fox jumps over the lazy dog.", 0),
            (0xcd99_481f_9ee9_02c9, 0x695d_a1a3_8987_b6e7)
        );
        assert_eq!(
            mur3::murmurhash3_x64_128(b"hello", 1),
            (0xa78d_dff5_adae_8d10, 0x1289_00ef_2090_0135)
        );
    }

    #[test]
    fn cilium_seeds() {
        // base64 "JLfvgnHc2kaSUFaI" = 24 b7 ef 82 71 dc da 46 92 50 56 88.
        assert_eq!(CiliumSeed::DEFAULT.murmur(), 0x24b7_ef82);
        assert_eq!(
            CiliumSeed::default(),
            CILIUM_DEFAULT_HASH_SEED.parse().unwrap()
        );
        assert_eq!(
            "AAAAAAAAAAAAAAAA".parse::<CiliumSeed>().unwrap().murmur(),
            0
        );
        assert_eq!(
            "/////wAAAAAAAAAA".parse::<CiliumSeed>().unwrap().murmur(),
            u32::MAX
        );
        for bad in [
            "JLfvgnHc2kaSUFa",
            "JLfvgnHc2kaSUFaI=",
            "JLfvgnHc2kaSUF==",
            "JLfvgnHc2ka-UFaI",
        ] {
            assert_eq!(bad.parse::<CiliumSeed>(), Err(ParseSeedError(bad.into())));
        }
        let bs = backends(10);
        let seeded = Table::build_cilium("AAAAAAAAAAAAAAAA".parse().unwrap(), 251, &bs).unwrap();
        assert_ne!(seeded, Table::build(MaglevHash::Cilium, 251, &bs).unwrap());
        assert_eq!(
            Table::build_cilium(CiliumSeed::DEFAULT, 251, &bs),
            Table::build(MaglevHash::Cilium, 251, &bs)
        );
    }

    /// Cilium's `mkAddr(i)`: the IPv4 address whose big-endian value is `i`,
    /// port `i % 65535`, TCP.
    fn cilium_backend(i: u32, weight: u32) -> WeightedBackend {
        WeightedBackend {
            endpoint: Endpoint {
                addr: IpAddr::V4(Ipv4Addr::from(i)),
                port: (i % 65535) as u16,
                proto: Proto::Tcp,
            },
            weight,
            scope: None,
        }
    }

    /// Cilium's run-length encoding of a table, `<id>(<count>),…`.
    fn run_lengths(slots: &[u32]) -> String {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for &id in slots {
            match runs.last_mut() {
                Some((last, count)) if *last == id => *count += 1,
                _ => runs.push((id, 1)),
            }
        }
        let runs: Vec<String> = runs.iter().map(|(id, n)| format!("{id}({n})")).collect();
        runs.join(",")
    }

    /// `pkg/maglev/maglev_test.go`, `TestReproducible`: the whole table.
    #[test]
    fn cilium_golden_table() {
        let expected = "2(5),3(1),2(3),1(1),2(2),0(1),2(1),3(1),2(1),3(1),2(1),1(1),2(7),1(1),2(14),3(1),2(1),\
            1(2),2(12),3(1),2(3),1(1),2(4),3(1),2(8),3(1),2(2),1(1),2(16),1(2),2(3),3(1),2(11),1(2),2(4),3(1),2(3),\
            1(1),2(4),3(1),2(1),0(1),1(1),2(8),1(1),2(7),1(1),2(4),3(1),2(1),3(1),2(9),1(2),2(5),1(1),2(7),3(1),2(1),\
            3(1),1(1),2(8),1(1),2(4),0(1),2(1),1(1),2(5),3(1),2(3),1(1),2(4),3(1),2(3),1(1),2(12),0(1),3(1),2(3),3(1),\
            2(4),3(1),2(2),1(1),2(7)";
        let bs = [
            cilium_backend(1, 2),
            cilium_backend(3, 13),
            cilium_backend(4, 111),
            cilium_backend(5, 10),
        ];
        let table = Table::build(MaglevHash::Cilium, 251, &bs).unwrap();
        assert_eq!(run_lengths(table.slots()), expected);
        // And whatever order they are listed in.
        let reversed: Vec<_> = bs.iter().rev().copied().collect();
        let table = Table::build(MaglevHash::Cilium, 251, &reversed).unwrap();
        assert_eq!(
            endpoints(&table, &reversed),
            endpoints(&Table::build(MaglevHash::Cilium, 251, &bs).unwrap(), &bs)
        );
    }

    /// `TestWeightedBackendWithRemoval`: exact slot counts, and under 1% of
    /// the slots of surviving backends move when the lightest is removed.
    #[test]
    fn cilium_golden_weighted_removal() {
        let bs = [
            cilium_backend(1, 2),
            cilium_backend(2, 13),
            cilium_backend(3, 111),
            cilium_backend(4, 10),
        ];
        let before = Table::build(MaglevHash::Cilium, 1021, &bs).unwrap();
        assert_eq!(before.slot_counts(), [16, 98, 832, 75]);
        let after = Table::build(MaglevHash::Cilium, 1021, &bs[1..]).unwrap();
        let moved = before
            .slots()
            .iter()
            .zip(after.slots())
            .filter(|&(&b, &a)| b != 0 && b != a + 1)
            .count();
        assert!(moved * 100 < 1021, "{moved} slots of survivors moved");
    }

    /// Cilium weighs only when the weights average 2 or more: 1 and 2 share
    /// equally, 100 and 200 do not; equal weights are round robin whatever
    /// their value.
    #[test]
    fn cilium_weighs_only_from_an_average_of_two() {
        let shares = |w: [u32; 2]| {
            let bs = [cilium_backend(1, w[0]), cilium_backend(2, w[1])];
            Table::build(MaglevHash::Cilium, 1021, &bs)
                .unwrap()
                .slot_counts()
        };
        assert_eq!(shares([1, 2]), [511, 510]);
        assert_eq!(shares([100, 200]), [341, 680]);
        let table = |w| {
            let bs: Vec<_> = (1..=5).map(|i| cilium_backend(i, w)).collect();
            Table::build(MaglevHash::Cilium, 1021, &bs).unwrap()
        };
        assert_eq!(table(1), table(100));
    }

    /// `TestBackendRemoval`: equal weights, three backends, the last removed.
    #[test]
    fn cilium_golden_removal() {
        let bs = [
            cilium_backend(1, 1),
            cilium_backend(2, 1),
            cilium_backend(3, 1),
        ];
        let before = Table::build(MaglevHash::Cilium, 1021, &bs).unwrap();
        let after = Table::build(MaglevHash::Cilium, 1021, &bs[..2]).unwrap();
        let moved = before
            .slots()
            .iter()
            .zip(after.slots())
            .filter(|&(&b, &a)| b != 2 && b != a)
            .count();
        assert!(moved * 100 < 1021, "{moved} slots of survivors moved");
    }

    /// Slots that belonged to a surviving backend and now belong to another.
    fn extra_moves(hash: MaglevHash, size: u32, bs: &[WeightedBackend], removed: usize) -> usize {
        let before = Table::build(hash, size, bs).unwrap();
        let mut rest = bs.to_vec();
        rest.remove(removed);
        let after = Table::build(hash, size, &rest).unwrap();
        before
            .slots()
            .iter()
            .zip(after.slots())
            .filter(|&(&b, &a)| {
                let b = b as usize;
                b != removed && bs[b].endpoint != rest[a as usize].endpoint
            })
            .count()
    }

    fn distinct_backends(max: usize) -> impl Strategy<Value = Vec<WeightedBackend>> {
        prop::collection::btree_map((any::<u32>(), 1..=u16::MAX), 1..=4u32, 2..=max).prop_map(
            |map| {
                map.into_iter()
                    .map(|((addr, port), weight)| WeightedBackend {
                        endpoint: Endpoint {
                            addr: IpAddr::V4(Ipv4Addr::from(addr)),
                            port,
                            proto: Proto::Tcp,
                        },
                        weight,
                        scope: None,
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Removing one of N backends (Rialto mode: weights 1 to 4, or all
        /// equal; Cilium mode: equal weights) moves its own slots, and of
        /// the other backends' slots at most
        /// `(w/W + REMOVAL_EXTRA_MOVES_SLACK)·M`: every other flow keeps its
        /// backend. Cilium's weighted scheme has no such bound: a removal
        /// can switch its weighting off or on (`W / l > 1`), which moved up
        /// to 22% of M in measurements.
        #[test]
        fn removal_moves_only_the_removed_backends_slots(
            bs in distinct_backends(64),
            mode in prop_oneof![
                Just((MaglevHash::Rialto, DEFAULT_TABLE_SIZE, false)),
                Just((MaglevHash::Rialto, DEFAULT_TABLE_SIZE, true)),
                Just((MaglevHash::Cilium, 65521, true)),
            ],
            pick in any::<prop::sample::Index>(),
        ) {
            let (hash, size, equal) = mode;
            let bs: Vec<_> = if equal {
                bs.iter().map(|b| WeightedBackend { weight: 1, ..*b }).collect()
            } else {
                bs
            };
            let removed = pick.index(bs.len());
            let extra = extra_moves(hash, size, &bs, removed);
            let total: u32 = bs.iter().map(|b| b.weight).sum();
            let share = f64::from(bs[removed].weight) / f64::from(total);
            let bound = (share + REMOVAL_EXTRA_MOVES_SLACK) * f64::from(size);
            prop_assert!(
                extra as f64 <= bound,
                "{}: {} extra moves removing 1 of {} backends, bound {:.0}",
                hash,
                extra,
                bs.len(),
                bound
            );
        }
    }
}
