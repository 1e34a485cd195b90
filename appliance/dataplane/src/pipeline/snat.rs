//! A worker's slice of the SNAT pool.
//!
//! The pool's port range is cut into one contiguous slice per worker, so
//! workers never share a port and the owner of a reply can be read from its
//! destination port ([`SnatPorts::owner`]). Within its slice a worker keeps
//! a stack of free ports per SNAT address and protocol, found by address
//! and protocol through an index: giving back is O(1) however many
//! addresses the pool has, and a port is never handed out while a flow
//! holds it.

use hashbrown::HashMap;
use rialto_tables::SnatPool;

use super::packet::{Addr, TCP, UDP, from_ip};

#[derive(Debug)]
struct Ports {
    addr: Addr,
    v6: bool,
    proto: u8,
    free: Vec<u16>,
}

/// Ports of a slice that flows kept from before hold ([`SnatPorts::claim`]).
#[derive(Debug)]
pub struct Claims(Vec<Vec<u64>>);

/// One worker's SNAT ports.
#[derive(Debug)]
pub struct SnatPorts {
    pools: Vec<Ports>,
    /// (address, protocol) -> index into `pools`.
    index: HashMap<(Addr, u8), usize>,
    /// The indices into `pools` of each family and protocol
    /// ([`Self::group`]).
    groups: [Vec<usize>; 4],
    first: u16,
    span: u32,
    workers: u32,
    /// This worker's slice, `first..end` (empty when there are more workers
    /// than ports).
    slice: std::ops::Range<u32>,
    /// The ports whose [`Self::owner`] is this worker: the slice, and for
    /// the first and the last worker the ports below and above the pool's.
    owned: std::ops::Range<u32>,
}

impl SnatPorts {
    /// Worker `worker` of `workers`' slice of `pool`: the ports cut into
    /// `workers` contiguous slices of equal length, the last worker taking
    /// the remainder. With more workers than ports, each of the first
    /// workers gets one port and the others none ([`Self::slice_len`] 0).
    pub fn new(pool: &SnatPool, worker: u32, workers: u32) -> Self {
        let workers = workers.max(1);
        let (first, last) = (u32::from(pool.ports.0), u32::from(pool.ports.1));
        let total = last + 1 - first;
        let span = (total / workers).max(1);
        let lo = (first + worker.saturating_mul(span)).min(last + 1);
        let hi = if worker + 1 == workers {
            last + 1
        } else {
            (lo + span).min(last + 1)
        };
        let slice: Vec<u16> = (lo..hi).rev().map(|p| p as u16).collect();
        let addrs = (pool.v4.iter().map(|&a| (from_ip(a.into()), false)))
            .chain(pool.v6.iter().map(|&a| (from_ip(a.into()), true)));
        let pools = addrs
            .flat_map(|(addr, v6)| {
                let slice = slice.clone();
                [TCP, UDP].map(move |proto| Ports {
                    addr,
                    v6,
                    proto,
                    free: slice.clone(),
                })
            })
            .collect::<Vec<_>>();
        let index = (pools.iter().enumerate())
            .map(|(i, p)| ((p.addr, p.proto), i))
            .collect();
        let mut groups: [Vec<usize>; 4] = Default::default();
        for (i, p) in pools.iter().enumerate() {
            groups[Self::group(p.v6, p.proto)].push(i);
        }
        // `owner` of the ports below the pool is the first worker, of the
        // ports above it the last.
        let from = if worker == 0 {
            0
        } else {
            first + worker.saturating_mul(span)
        };
        let to = if worker + 1 == workers {
            1 << 16
        } else {
            (first + (worker + 1).saturating_mul(span)).min(1 << 16)
        };
        let owned = match worker < workers {
            true => from..to.max(from),
            false => 0..0,
        };
        Self {
            pools,
            index,
            groups,
            first: pool.ports.0,
            span,
            workers,
            slice: lo..hi,
            owned,
        }
    }

    /// Which of `groups` the pools of a family and protocol are in.
    fn group(v6: bool, proto: u8) -> usize {
        usize::from(v6) * 2 + usize::from(proto == UDP)
    }

    /// Takes a free port of an address of the family, starting the search
    /// at the address `hash` picks (its upper half scaled to the number of
    /// addresses: no division).
    pub fn take(&mut self, v6: bool, proto: u8, hash: u64) -> Option<(Addr, u16)> {
        let group = &self.groups[Self::group(v6, proto)];
        let start = (((hash >> 32) * group.len() as u64) >> 32) as usize;
        let (after, before) = group.split_at(start);
        let i = *(before.iter().chain(after)).find(|&&i| !self.pools[i].free.is_empty())?;
        let p = &mut self.pools[i];
        Some((p.addr, p.free.pop().expect("checked non-empty")))
    }

    /// Returns a port taken with [`Self::take`].
    pub fn give_back(&mut self, addr: &Addr, proto: u8, port: u16) {
        if let Some(&i) = self.index.get(&(*addr, proto)) {
            self.pools[i].free.push(port);
        }
    }

    /// Which worker's slice `port` is in.
    pub fn owner(&self, port: u16) -> u32 {
        (u32::from(port.saturating_sub(self.first)) / self.span).min(self.workers - 1)
    }

    /// Whether `port` is this worker's ([`Self::owner`] says so): a range
    /// test on every packet to a SNAT address, where the owner is a
    /// division.
    #[inline]
    pub fn owns(&self, port: u16) -> bool {
        self.owned.contains(&u32::from(port))
    }

    /// The ports whose [`Self::owner`] is this worker.
    pub fn owned(&self) -> std::ops::Range<u32> {
        self.owned.clone()
    }

    /// Whether `addr` is one of the pool's for `proto` (in any slice).
    #[inline]
    pub fn has_addr(&self, addr: &Addr, proto: u8) -> bool {
        self.index.contains_key(&(*addr, proto))
    }

    /// Whether `port` of `addr` for `proto` is in this slice (taken or not).
    pub fn holds(&self, addr: &Addr, proto: u8, port: u16) -> bool {
        self.slice.contains(&u32::from(port)) && self.index.contains_key(&(*addr, proto))
    }

    /// An empty record of the ports flows kept from before hold (after a
    /// reload with a new pool, or a restart), one bit per port of each
    /// address and protocol of the slice.
    pub fn claims(&self) -> Claims {
        let words = self.slice.len().div_ceil(64);
        Claims(vec![vec![0; words]; self.pools.len()])
    }

    /// Records that a flow holds `port` of `addr` for `proto`: false if the
    /// port is not this slice's, or another flow holds it already.
    pub fn claim(&self, claims: &mut Claims, addr: &Addr, proto: u8, port: u16) -> bool {
        let Some(&pool) = self.index.get(&(*addr, proto)) else {
            return false;
        };
        if !self.slice.contains(&u32::from(port)) {
            return false;
        }
        let bit = (u32::from(port) - self.slice.start) as usize;
        let word = &mut claims.0[pool][bit / 64];
        let mask = 1 << (bit % 64);
        let free = *word & mask == 0;
        *word |= mask;
        free
    }

    /// Takes every claimed port out of the free lists.
    pub fn settle(&mut self, claims: &Claims) {
        let start = self.slice.start;
        for (p, bits) in self.pools.iter_mut().zip(&claims.0) {
            p.free.retain(|&port| {
                let bit = (u32::from(port) - start) as usize;
                bits[bit / 64] & 1 << (bit % 64) == 0
            });
        }
    }

    /// Free ports per (address, protocol).
    pub fn free(&self) -> impl Iterator<Item = (Addr, u8, usize)> + '_ {
        self.pools.iter().map(|p| (p.addr, p.proto, p.free.len()))
    }

    /// Ports in this worker's slice (per address and protocol).
    pub fn slice_len(&self) -> usize {
        self.slice.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::packet::mapped;

    fn pool() -> SnatPool {
        SnatPool {
            v4: vec![[198, 18, 200, 1].into()],
            v6: vec!["fd00:200::1".parse().unwrap()],
            ports: (1000, 1009),
        }
    }

    #[test]
    fn workers_get_disjoint_slices_and_owners_are_computable() {
        let mut a = SnatPorts::new(&pool(), 0, 3);
        let mut b = SnatPorts::new(&pool(), 2, 3);
        let mut taken = Vec::new();
        while let Some((_, port)) = a.take(false, TCP, 0) {
            assert_eq!(a.owner(port), 0);
            taken.push(port);
        }
        while let Some((_, port)) = b.take(false, TCP, 0) {
            assert_eq!(b.owner(port), 2);
            taken.push(port);
        }
        assert_eq!(taken, vec![1000, 1001, 1002, 1006, 1007, 1008, 1009]);
    }

    /// For any number of workers and ports: the slices are disjoint, cover
    /// the range, never wrap, and each port's owner is the worker holding it.
    #[test]
    fn slices_cover_the_range_for_any_workers() {
        for (first, last) in [
            (1000, 1009),
            (1, 1),
            (65535, 65535),
            (1, 65535),
            (60000, 60002),
        ] {
            for workers in [1, 2, 3, 7, 10, 11, 64, 100_000] {
                let pool = SnatPool {
                    ports: (first, last),
                    ..pool()
                };
                let slices: Vec<_> = (0..workers)
                    .map(|w| SnatPorts::new(&pool, w, workers))
                    .collect();
                let total: usize = slices.iter().map(SnatPorts::slice_len).sum();
                assert_eq!(
                    total,
                    usize::from(last - first) + 1,
                    "{first}-{last} over {workers}"
                );
                let mut next = u32::from(first);
                for (w, s) in slices.iter().enumerate() {
                    assert!(s.slice.is_empty() || s.slice.start == next, "contiguous");
                    next = next.max(s.slice.end);
                    for port in s.slice.clone() {
                        let port = port as u16;
                        assert!(s.holds(&mapped([198, 18, 200, 1]), TCP, port));
                        assert_eq!(s.owner(port), w as u32, "{first}-{last} over {workers}");
                    }
                }
                // Every port, the pool's or not, is owned by its owner
                // alone (with many workers: some ports, and the workers
                // around the owner).
                let (step, around) = if workers > 100 { (97, 2) } else { (1, 100) };
                for port in (0..=u16::MAX).step_by(step) {
                    let owner = slices[0].owner(port) as usize;
                    let near = owner.saturating_sub(around)..(owner + around).min(slices.len());
                    for w in near {
                        assert_eq!(
                            slices[w].owns(port),
                            w == owner,
                            "port {port}, {first}-{last} over {workers}"
                        );
                    }
                }
            }
        }
        let none = SnatPorts::new(
            &SnatPool {
                ports: (1000, 1001),
                ..pool()
            },
            5,
            10,
        );
        assert_eq!(none.slice_len(), 0);
        assert_eq!(none.free().map(|(_, _, n)| n).sum::<usize>(), 0);
    }

    #[test]
    fn families_and_protocols_do_not_share() {
        let mut p = SnatPorts::new(&pool(), 0, 1);
        let (addr, port) = p.take(true, UDP, 7).unwrap();
        assert_eq!(
            (addr, port),
            (
                "fd00:200::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
                1000
            )
        );
        assert_eq!(
            p.take(false, UDP, 7).unwrap(),
            (mapped([198, 18, 200, 1]), 1000)
        );
        p.give_back(&addr, UDP, port);
        assert_eq!(p.take(true, UDP, 0).unwrap().1, 1000);
    }

    /// A hash picks where the search starts among the family's addresses
    /// (its upper half: the lower is the flow's port and gateway), each
    /// address as often; once an address has no port left, the next one
    /// of the family and protocol gives, until all are taken.
    #[test]
    fn the_hash_picks_the_address_and_the_next_gives_when_it_runs_out() {
        let addrs: Vec<std::net::Ipv4Addr> = (1..=3).map(|i| [198, 18, 200, i].into()).collect();
        let pool = SnatPool {
            v4: addrs.clone(),
            ..pool()
        };
        let mut p = SnatPorts::new(&pool, 0, 1);
        let third = u64::MAX / 3;
        for (i, addr) in addrs.iter().enumerate() {
            let hash = i as u64 * third + third / 2;
            assert_eq!(p.take(false, TCP, hash).unwrap().0, mapped(addr.octets()));
        }
        let mut taken = 3;
        while let Some((addr, _)) = p.take(false, TCP, u64::MAX) {
            assert!(addrs.iter().any(|a| mapped(a.octets()) == addr));
            taken += 1;
        }
        assert_eq!(taken, 3 * 10, "every port of every address, then none");
        assert!(p.take(false, UDP, u64::MAX).is_some(), "UDP's are its own");
        assert!(p.take(true, TCP, u64::MAX).is_some(), "so are IPv6's");
    }
}
