//! A small map from Rialto's own addresses (as `u128`, with a port and
//! protocol for a VIP) to what they are, read per packet: open addressing
//! at most a quarter full, the home slot one multiply away.

/// A key of a [`KeyMap`]: an address, or an address with more.
pub(crate) trait MapKey: Copy + Eq + std::hash::Hash {
    /// The key in 64 bits, for its home slot.
    fn fold(self) -> u64;
}

impl MapKey for u128 {
    #[inline]
    fn fold(self) -> u64 {
        (self as u64) ^ (self >> 64) as u64
    }
}

impl MapKey for u32 {
    #[inline]
    fn fold(self) -> u64 {
        u64::from(self)
    }
}

impl MapKey for (u128, u16, u8) {
    #[inline]
    fn fold(self) -> u64 {
        self.0.fold() ^ (u64::from(self.1) << 8 | u64::from(self.2))
    }
}

/// A map from the config's addresses (as `u128`, with a port and protocol
/// for a VIP) to `V`, read two to four times per packet: open addressing
/// at most a quarter full, the home slot one multiply away, linear
/// probing. Built once per tables, never changed. A lookup costs about a
/// third of hashbrown's (foldhash of 16 bytes, then a group probe) for the
/// handful of addresses a config has; the keys are the config's, so no
/// sender chooses the chains.
#[derive(Debug)]
pub(crate) struct KeyMap<K, V> {
    entries: Box<[Option<(K, V)>]>,
    /// 64 less log2 of the entries: the home is the hash's top bits.
    shift: u32,
}

impl<K: MapKey, V: Copy> KeyMap<K, V> {
    pub(crate) fn new(map: hashbrown::HashMap<K, V>) -> Self {
        let size = (map.len() * 4).next_power_of_two().max(4);
        let shift = 64 - size.trailing_zeros();
        let mut entries = vec![None; size].into_boxed_slice();
        for (key, value) in map {
            let mut at = Self::home(key, shift);
            while entries[at].is_some() {
                at = (at + 1) & (size - 1);
            }
            entries[at] = Some((key, value));
        }
        Self { entries, shift }
    }

    #[inline]
    fn home(key: K, shift: u32) -> usize {
        (key.fold().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as usize
    }

    /// The value of `key`. Ends at an empty entry, and at most a quarter
    /// of them are taken. Inlined: it is read two to four times a packet.
    #[inline(always)]
    pub(crate) fn get(&self, key: K) -> Option<V> {
        let mask = self.entries.len() - 1;
        let mut at = Self::home(key, self.shift);
        loop {
            match self.entries[at] {
                Some((k, value)) if k == key => return Some(value),
                None => return None,
                Some(_) => at = (at + 1) & mask,
            }
        }
    }
}

impl<K: MapKey, V: Copy> Default for KeyMap<K, V> {
    fn default() -> Self {
        Self::new(hashbrown::HashMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::packet::{TCP, UDP, from_ip};
    use std::net::IpAddr;

    /// An IPv4-mapped address `198.18.x.y` as the maps key it.
    fn v4(n: u16) -> u128 {
        let [x, y] = n.to_be_bytes();
        u128::from_ne_bytes(from_ip(IpAddr::from([198, 18, x, y])))
    }

    proptest::proptest! {
        /// The address map finds exactly what it was built with: keys
        /// close together (IPv4-mapped, as most are) and arbitrary ones,
        /// looked up present and absent.
        #[test]
        fn the_address_map_agrees_with_a_hash_map(
            near in proptest::collection::vec(0u16..64, 0..40),
            far in proptest::collection::vec(proptest::prelude::any::<u128>(), 0..20),
            probes in proptest::collection::vec(0u16..96, 0..40),
        ) {
            let keys: Vec<u128> = near.iter().map(|&n| v4(n)).chain(far).collect();
            let map: hashbrown::HashMap<u128, u32> =
                keys.iter().enumerate().map(|(i, &k)| (k, i as u32)).collect();
            let addrs = KeyMap::new(map.clone());
            for key in keys.iter().copied().chain(probes.iter().map(|&n| v4(n))) {
                proptest::prop_assert_eq!(addrs.get(key), map.get(&key).copied());
            }
            // The same IPv4 addresses by their 32 bits, as the fast path
            // looks them up.
            let ipv4: hashbrown::HashMap<u32, u32> =
                map.iter().map(|(&k, &v)| ((k >> 96) as u32, v)).collect();
            let addrs = KeyMap::new(ipv4.clone());
            for key in near.iter().chain(&probes).map(|&n| (v4(n) >> 96) as u32) {
                proptest::prop_assert_eq!(addrs.get(key), ipv4.get(&key).copied());
            }
        }

        /// So does the VIP map, its keys a few addresses each with several
        /// ports and both protocols, looked up with each part changed.
        #[test]
        fn the_vip_map_agrees_with_a_hash_map(
            vips in proptest::collection::vec((0u16..8, 0u16..6, proptest::prelude::any::<bool>()), 0..40),
            probes in proptest::collection::vec((0u16..10, 0u16..8, proptest::prelude::any::<bool>()), 0..40),
        ) {
            let key = |(addr, port, udp): (u16, u16, bool)| (v4(addr), 80 + port, if udp { UDP } else { TCP });
            let map: hashbrown::HashMap<(u128, u16, u8), u32> =
                vips.iter().enumerate().map(|(i, &v)| (key(v), i as u32)).collect();
            let vips_map = KeyMap::new(map.clone());
            for k in vips.iter().chain(&probes).map(|&v| key(v)) {
                proptest::prop_assert_eq!(vips_map.get(k), map.get(&k).copied());
            }
        }
    }
}
