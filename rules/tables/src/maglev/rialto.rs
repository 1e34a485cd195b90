//! Rialto mode ([`MaglevHash::Rialto`]).
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

use std::{cmp::Reverse, collections::BinaryHeap};

use super::{
    MaglevError, MaglevHash, RIALTO_SEED, Table, WeightedBackend, check_size, fill::Fill, validate,
};

/// Rialto mode's table of `size` slots for `backends`.
pub(super) fn build(size: u32, backends: &[WeightedBackend]) -> Result<Table, MaglevError> {
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

/// Rialto mode's identity bytes: family, address, port (big endian), IP
/// protocol number, then the scope (big endian) if there is one.
pub(super) fn rialto_identity(backend: &WeightedBackend) -> Vec<u8> {
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
