//! The tests of the Maglev module, all parts.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::rialto::rialto_identity;
use super::*;
use crate::{ParseEndpointError, Proto};

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
                .slot_counts()
                .to_vec();
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
            .to_vec()
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
    prop::collection::btree_map((any::<u32>(), 1..=u16::MAX), 1..=4u32, 2..=max).prop_map(|map| {
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
    })
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
