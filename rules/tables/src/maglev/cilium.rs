//! Cilium mode ([`MaglevHash::Cilium`], [`Table::build_cilium`]): bit for bit the table of Cilium's agent, so a fleet mixing Cilium and
//! Rialto nodes maps a slot to the same backend. Followed: `pkg/maglev/maglev.go`
//! of `cilium/cilium` (the `BackendInfo.setHashString` / `computeLookupTable`
//! version of the new load-balancer control plane) and `pkg/murmur3/murmur3.go`;
//! the golden tests (`tests.rs`) are `pkg/maglev/maglev_test.go`'s `TestReproducible`
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

use std::str::FromStr;

use super::{
    CILIUM_DEFAULT_HASH_SEED, MaglevError, MaglevHash, Table, WeightedBackend, check_size,
    fill::Fill, validate,
};
use crate::Endpoint;

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

/// The table Cilium builds from `backends` with `seed`.
pub(super) fn build(
    seed: CiliumSeed,
    size: u32,
    backends: &[WeightedBackend],
) -> Result<Table, MaglevError> {
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
