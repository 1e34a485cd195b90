//! A flow as a compact slot would keep it: 48 bytes ([`Packed`]), the
//! client's address and port whole, and the rest of both keys by the
//! indices the tables name them by ([`Names`]): the service for the VIP,
//! its port and protocol; the backend for its address, port and cluster;
//! the cluster for a tunnel's VNI; the SNAT address by its place among the
//! fleet's. A [`Flow`] packs only if its keys are what its indices name
//! there, so unpacking gives back the very flow.
//!
//! A slot says whether it is empty, being written or live (`mark`), and of
//! which generation of names (a reload that changes what the indices name
//! packs every slot again, under the next generation: a state file's
//! header names both, so a crash in the middle of a reload leaves no slot
//! read under the wrong names), and carries a check of the fields only a
//! reload changes, so what is read back after a crash is checked, not
//! trusted.

use std::{
    net::IpAddr,
    sync::atomic::{Ordering, compiler_fence},
};

use bytemuck::{Pod, Zeroable};
use rialto_tables::FlowContext;

use super::{Direction, Flow, FlowKey, Rewrite, Side, SlotState, TcpState, UPLINK};
use crate::pipeline::{keymap::KeyMap, nat::Sums, packet::Addr, packet::from_ip};

/// The cluster index of the uplink.
const UPLINK_CLUSTER: u16 = u16::MAX;

/// A flow in 48 bytes, by the indices of a [`Names`]: a slot of the flow
/// table, as it lies in memory and in a state file.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Packed {
    /// The client's address and port: the forward key's source.
    pub client: Addr,
    pub client_port: u16,
    /// The reverse key's destination port.
    pub snat_port: u16,
    /// The service: the forward key's destination and protocol.
    pub service: u16,
    /// The backend's index in its service: the reverse key's source, and
    /// its tunnel's cluster.
    pub backend: u16,
    /// The cluster and gateway the client is behind ([`UPLINK_CLUSTER`]
    /// and 0: the uplink).
    pub client_cluster: u16,
    pub client_gateway: u16,
    /// The gateway of the backend's cluster the flow goes through.
    pub backend_gateway: u16,
    /// The SNAT address, by its place among the fleet's.
    pub snat: u16,
    pub hash: u32,
    pub sums: Sums,
    pub expires: u32,
    pub state: u8,
    pub mark: u8,
    pub check: u16,
}

/// How many bytes of a slot its check covers ([`Packed::checked`]).
const CHECKED: usize = std::mem::offset_of!(Packed, expires);

impl Packed {
    pub const EMPTY: u8 = 0;
    pub const WRITING: u8 = 1;
    /// A live slot's mark: this, plus its generation (0 or 1).
    pub const LIVE: u8 = 2;

    /// The check of `slot`: the low 16 bits of the XXH3 hash (64 bits, no
    /// seed) of its fields that only a reload changes ([`Packed::checked`]).
    /// A new flow's slot is checked as it is written: XXH3 takes about 40
    /// instructions over these 40 bytes, a table-driven CRC-32 about 145.
    /// Its output is fixed by its specification, so a state file written by
    /// one build checks out in the next.
    pub fn check_of(slot: &Packed) -> u16 {
        xxhash_rust::xxh3::xxh3_64(slot.checked()) as u16
    }

    /// The bytes of the slot its check covers: all but what each packet
    /// changes (`expires`, `state`) and the mark and check themselves.
    pub fn checked(&self) -> &[u8] {
        &bytemuck::bytes_of(self)[..CHECKED]
    }

    /// Whether the slot holds a flow, and a whole one.
    pub fn slot_state(&self) -> SlotState {
        self.slot_state_by(Self::check_of)
    }

    /// [`Packed::slot_state`], the slot checked by `check_of` (an older
    /// state file's check, when one is read back).
    pub fn slot_state_by(&self, check_of: impl Fn(&Packed) -> u16) -> SlotState {
        match self.mark {
            Self::EMPTY => SlotState::Empty,
            Self::WRITING => SlotState::Torn,
            _ if self.is_live() && self.check == check_of(self) && self.tcp_state().is_valid() => {
                SlotState::Live
            }
            _ => SlotState::Corrupt,
        }
    }

    /// Whether the slot is marked live (of either generation).
    #[inline]
    pub fn is_live(&self) -> bool {
        self.mark & !1 == Self::LIVE
    }

    /// The generation of names a live slot is packed under.
    pub fn generation(&self) -> u8 {
        self.mark & 1
    }

    pub fn tcp_state(&self) -> TcpState {
        TcpState(u32::from(self.state))
    }

    /// Writes `packed`, packed under names of `generation`, here so that
    /// a writer stopped at any point leaves the slot empty, marked torn,
    /// or whole: the mark goes last.
    pub(super) fn write(&mut self, packed: Packed, generation: u8) {
        self.mark = Self::WRITING;
        compiler_fence(Ordering::Release);
        *self = Packed {
            mark: Self::WRITING,
            check: Self::check_of(&packed),
            ..packed
        };
        compiler_fence(Ordering::Release);
        self.mark = Self::LIVE | generation;
    }
}

/// A service as a [`Packed`] flow's index names it.
#[derive(Debug)]
struct Named {
    vip: Addr,
    port: u16,
    proto: u8,
    /// Its backends' address, port and cluster.
    backends: Vec<(Addr, u16, u16)>,
}

/// What the indices of a [`Packed`] flow name: a config's services and
/// clusters (its [`FlowContext`]) and the fleet's SNAT addresses.
#[derive(Debug)]
pub struct Names {
    services: Vec<Named>,
    /// Per cluster, its VNI.
    vnis: Vec<u32>,
    snat: Vec<Addr>,
    /// SNAT address -> its place in `snat`.
    snat_of: KeyMap<u128, u16>,
}

impl Names {
    /// The names of `context`, with the SNAT addresses `snat` in that
    /// order (at most 65,536 of each kind are named; the config check
    /// allows far fewer).
    pub fn new(context: &FlowContext, snat: &[IpAddr]) -> Self {
        let services = (context.services.iter())
            .map(|s| Named {
                vip: from_ip(s.vip.addr),
                port: s.vip.port,
                proto: s.vip.proto.number(),
                backends: (s.backends.iter())
                    .map(|&(addr, cluster)| (from_ip(addr.ip()), addr.port(), cluster))
                    .collect(),
            })
            .collect();
        let snat: Vec<Addr> = snat.iter().map(|&a| from_ip(a)).collect();
        let snat_of = (0..=u16::MAX)
            .zip(&snat)
            .map(|(i, a)| (u128::from_ne_bytes(*a), i))
            .collect();
        Self {
            services,
            vnis: context.clusters.iter().map(|c| c.vni).collect(),
            snat,
            snat_of: KeyMap::new(snat_of),
        }
    }

    /// The tunnel of cluster `cluster`: its VNI, or [`UPLINK`].
    fn tunnel(&self, cluster: u16) -> Option<u32> {
        match cluster {
            UPLINK_CLUSTER => Some(UPLINK),
            c => self.vnis.get(usize::from(c)).copied(),
        }
    }

    /// `flow` packed, its expiry and state with it (mark and check left
    /// zero), if its keys are what its indices name here: what a flow from
    /// elsewhere (a peer's, or read back after a restart) must show.
    pub fn pack(&self, flow: &Flow) -> Option<Packed> {
        self.fields(flow)
            .filter(|packed| self.names_keys_of(packed, flow))
    }

    /// [`Names::pack`] of a flow made here (by the balancer, from the
    /// tables these names come from), if its indices fit and name
    /// something: its keys are what they name by construction, and are
    /// not compared again (a debug build compares them all the same).
    pub fn pack_made(&self, flow: &Flow) -> Option<Packed> {
        let packed = self.fields(flow)?;
        let service = self.services.get(usize::from(packed.service))?;
        service.backends.get(usize::from(packed.backend))?;
        self.tunnel(packed.client_cluster)?;
        debug_assert!(
            self.names_keys_of(&packed, flow),
            "a flow made here packs as it is"
        );
        Some(packed)
    }

    /// `flow`'s fields as a slot holds them, if its indices fit.
    fn fields(&self, flow: &Flow) -> Option<Packed> {
        let service = u16::try_from(flow.service).ok()?;
        let backend = u16::try_from(flow.backend_index).ok()?;
        let (client_cluster, client_gateway) =
            flow.client.tunnel_of().unwrap_or((UPLINK_CLUSTER, 0));
        let (_, backend_gateway) = flow.backend.tunnel_of()?;
        let snat = self.snat_of.get(u128::from_ne_bytes(flow.reverse.dst))?;
        let state = u8::try_from(flow.state.0).ok()?;
        Some(Packed {
            client: flow.forward.src,
            client_port: flow.forward.src_port,
            snat_port: flow.reverse.dst_port,
            service,
            backend,
            client_cluster,
            client_gateway,
            backend_gateway,
            snat,
            hash: flow.hash,
            sums: flow.sums,
            expires: flow.expires,
            state,
            mark: 0,
            check: 0,
        })
    }

    /// Whether unpacking `packed` gives `flow` back, compared where it
    /// lies: both keys, the backend's cluster, and the client's side (the
    /// rest is copied, or converted without loss by [`Names::fields`]).
    fn names_keys_of(&self, packed: &Packed, flow: &Flow) -> bool {
        let (service, backend) = (packed.service, packed.backend);
        let backend_cluster = (self.services.get(usize::from(service)))
            .and_then(|s| s.backends.get(usize::from(backend)))
            .map(|&(_, _, cluster)| cluster);
        let client = match flow.client.tunnel_of() {
            None => Side::UPLINK,
            Some((c, g)) => Side::tunnel(c, g),
        };
        self.is_forward(packed, &flow.forward)
            && self.is_reverse(packed, &flow.reverse)
            && backend_cluster == flow.backend.tunnel_of().map(|(c, _)| c)
            && client == flow.client
            && (flow.forward.pad, flow.reverse.pad) == ([0; 3], [0; 3])
    }

    /// The forward key of `packed` (client -> VIP), if its indices name
    /// something here.
    #[inline]
    pub fn forward_key(&self, packed: &Packed) -> Option<FlowKey> {
        let service = self.services.get(usize::from(packed.service))?;
        Some(FlowKey {
            src: packed.client,
            dst: service.vip,
            src_port: packed.client_port,
            dst_port: service.port,
            tunnel: self.tunnel(packed.client_cluster)?,
            proto: service.proto,
            pad: [0; 3],
        })
    }

    /// The reverse key of `packed` (backend -> SNAT address), and the
    /// backend's cluster, if its indices name something here.
    #[inline]
    pub fn reverse_key(&self, packed: &Packed) -> Option<(FlowKey, u16)> {
        let service = self.services.get(usize::from(packed.service))?;
        let &(backend, backend_port, cluster) =
            service.backends.get(usize::from(packed.backend))?;
        let key = FlowKey {
            src: backend,
            dst: *self.snat.get(usize::from(packed.snat))?,
            src_port: backend_port,
            dst_port: packed.snat_port,
            tunnel: self.tunnel(cluster)?,
            proto: service.proto,
            pad: [0; 3],
        };
        Some((key, cluster))
    }

    /// Whether `key` is `packed`'s forward key: [`Names::forward_key`]
    /// compared field by field where it lies, without building it (on
    /// every packet's path). Its padding is not compared: every key
    /// looked up is built with none (the pipeline's; a peer's flow with
    /// any is refused before it is adopted, `fleet::valid`).
    #[inline]
    pub fn is_forward(&self, packed: &Packed, key: &FlowKey) -> bool {
        let Some(service) = self.services.get(usize::from(packed.service)) else {
            return false;
        };
        let word = u128::from_ne_bytes;
        let addrs = (word(packed.client) ^ word(key.src)) | (word(service.vip) ^ word(key.dst));
        addrs == 0
            && (packed.client_port, service.port, service.proto)
                == (key.src_port, key.dst_port, key.proto)
            && self.tunnel(packed.client_cluster) == Some(key.tunnel)
    }

    /// Whether `key` is `packed`'s reverse key ([`Names::reverse_key`]),
    /// compared where it lies (its padding not: see [`Names::is_forward`]).
    #[inline]
    pub fn is_reverse(&self, packed: &Packed, key: &FlowKey) -> bool {
        let Some(service) = self.services.get(usize::from(packed.service)) else {
            return false;
        };
        let (Some(&(backend, port, cluster)), Some(snat)) = (
            service.backends.get(usize::from(packed.backend)),
            self.snat.get(usize::from(packed.snat)),
        ) else {
            return false;
        };
        let word = u128::from_ne_bytes;
        let addrs = (word(backend) ^ word(key.src)) | (word(*snat) ^ word(key.dst));
        addrs == 0
            && (port, packed.snat_port, service.proto) == (key.src_port, key.dst_port, key.proto)
            && self.tunnel(cluster) == Some(key.tunnel)
    }

    /// The protocol of `packed`'s service (0 if none).
    #[inline]
    pub fn proto(&self, packed: &Packed) -> u8 {
        self.services
            .get(usize::from(packed.service))
            .map_or(0, |s| s.proto)
    }

    /// How many SNAT addresses the fleet has.
    pub fn snat_count(&self) -> usize {
        self.snat.len()
    }

    /// The SNAT address of `packed`.
    #[inline]
    pub fn snat_addr(&self, packed: &Packed) -> Option<&Addr> {
        self.snat.get(usize::from(packed.snat))
    }

    /// What a packet of `packed` going `direction` becomes
    /// ([`Flow::rewrite`]), read from the slot and the names without
    /// unpacking the flow.
    #[inline]
    pub fn rewrite(&self, packed: &Packed, direction: Direction) -> Option<Rewrite> {
        let service = self.services.get(usize::from(packed.service))?;
        Some(match direction {
            Direction::Forward => {
                let &(backend, port, cluster) =
                    service.backends.get(usize::from(packed.backend))?;
                Rewrite {
                    to: Side::tunnel(cluster, packed.backend_gateway),
                    src: (*self.snat.get(usize::from(packed.snat))?, packed.snat_port),
                    dst: (backend, port),
                }
            }
            Direction::Reply => Rewrite {
                to: match packed.client_cluster {
                    UPLINK_CLUSTER => Side::UPLINK,
                    c => Side::tunnel(c, packed.client_gateway),
                },
                src: (service.vip, service.port),
                dst: (packed.client, packed.client_port),
            },
        })
    }

    /// The flow `packed` names here, if its indices name something.
    pub fn unpack(&self, packed: &Packed) -> Option<Flow> {
        let (reverse, cluster) = self.reverse_key(packed)?;
        let client = match packed.client_cluster {
            UPLINK_CLUSTER if packed.client_gateway == 0 => Side::UPLINK,
            UPLINK_CLUSTER => return None,
            c => Side::tunnel(c, packed.client_gateway),
        };
        Some(Flow {
            forward: self.forward_key(packed)?,
            reverse,
            client,
            backend: Side::tunnel(cluster, packed.backend_gateway),
            service: u32::from(packed.service),
            backend_index: u32::from(packed.backend),
            hash: packed.hash,
            sums: packed.sums,
            expires: packed.expires,
            state: packed.tcp_state(),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rialto_tables::{
        Endpoint, Proto,
        context::{ContextCluster, ContextService},
    };

    use super::*;
    use crate::pipeline::packet::mapped;

    /// What a state file of version 2 holds, byte for byte.
    #[test]
    fn a_packed_flow_is_48_bytes_its_mark_at_45() {
        assert_eq!(size_of::<Packed>(), 48);
        assert_eq!(std::mem::offset_of!(Packed, mark), 45);
    }

    /// Names of `clusters` clusters and of services with `backends[s]`
    /// backends each, and `snat` SNAT addresses, all in 198.18.0.0/15.
    fn names(clusters: u16, backends: &[u16], snat: u8) -> (FlowContext, Vec<IpAddr>) {
        let context = FlowContext {
            clusters: (0..clusters)
                .map(|c| ContextCluster {
                    name: format!("c{c}"),
                    vni: 100 + u32::from(c),
                    gateways: vec![IpAddr::from([198, 18, 2, c as u8])],
                })
                .collect(),
            services: (0u16..)
                .zip(backends)
                .map(|(s, &n)| ContextService {
                    vip: Endpoint {
                        addr: IpAddr::from([198, 18, 100, s as u8]),
                        port: 80 + s,
                        proto: if s % 2 == 0 { Proto::Tcp } else { Proto::Udp },
                    },
                    backends: (0..n)
                        .map(|b| {
                            (
                                (IpAddr::from([198, 19, s as u8, b as u8]), 8080).into(),
                                b % clusters,
                            )
                        })
                        .collect(),
                })
                .collect(),
        };
        let snat = (1..=snat)
            .map(|i| IpAddr::from([198, 18, 200, i]))
            .collect();
        (context, snat)
    }

    /// The flow that the indices `(service, backend, snat, client)` name
    /// under `names`, with the rest from the arguments.
    fn flow(
        names: &Names,
        (service, backend, snat): (u16, u16, u16),
        client: Option<(u16, u16)>,
        (port, snat_port, hash, expires, state): (u16, u16, u32, u32, u8),
    ) -> Flow {
        let packed = Packed {
            client: mapped([198, 18, 0, 2]),
            client_port: port,
            snat_port,
            service,
            backend,
            client_cluster: client.map_or(UPLINK_CLUSTER, |c| c.0),
            client_gateway: client.map_or(0, |c| c.1),
            backend_gateway: 0,
            snat,
            hash,
            sums: Sums::default(),
            expires,
            state,
            mark: 0,
            check: 0,
        };
        names.unpack(&packed).expect("indices in range")
    }

    /// Names of 3 clusters, services of `backends` backends and 3 SNAT
    /// addresses; the flow that `pick` (service, backend, SNAT address,
    /// each modulo their count), `client` and `rest` make under them
    /// ([`flow`]), and its packing.
    fn packed_flow(
        backends: &[u16],
        pick: (u16, u16, u16),
        client: Option<(u16, u16)>,
        rest: (u16, u16, u32, u32, u8),
    ) -> (Names, Flow, Packed) {
        let (context, snat) = names(3, backends, 3);
        let names = Names::new(&context, &snat);
        let service = pick.0 % backends.len() as u16;
        let backend = pick.1 % backends[usize::from(service)];
        let flow = flow(&names, (service, backend, pick.2), client, rest);
        let packed = names.pack(&flow).expect("packs");
        (names, flow, packed)
    }

    proptest! {
        /// A flow made under the names packs, and unpacks to itself; with
        /// any one field of its keys that an index names changed, it does
        /// not pack.
        #[test]
        fn a_flow_packs_to_what_unpacks_to_it(
            backends in prop::collection::vec(1u16..4, 1..4),
            pick in (any::<u16>(), any::<u16>(), 0u16..3),
            client in prop::option::of((0u16..3, 0u16..2)),
            rest in (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>(), 0u8..5),
            field in 0usize..11,
        ) {
            let (names, flow, packed) = packed_flow(&backends, pick, client, rest);
            prop_assert_eq!(names.unpack(&packed), Some(flow));
            // Both paths rewrite from the slot: it says what the flow does.
            for direction in [Direction::Forward, Direction::Reply] {
                prop_assert_eq!(names.rewrite(&packed, direction), Some(flow.rewrite(direction)));
            }
            let mut other = flow;
            match field {
                0 => other.forward.dst[15] ^= 1,
                1 => other.forward.dst_port ^= 1,
                2 => other.forward.tunnel ^= 1,
                3 => other.reverse.src[15] ^= 1,
                4 => other.reverse.src_port ^= 1,
                5 => other.reverse.tunnel ^= 1,
                6 => other.reverse.proto ^= 1,
                7 => other.reverse.dst[15] ^= 0x80,
                8 => other.forward.pad[0] = 1,
                // The backend's side in another cluster (its keys as they were).
                9 => {
                    let (cluster, gateway) = other.backend.tunnel_of().expect("a tunnel");
                    other.backend = Side::tunnel(cluster ^ 1, gateway);
                }
                // The client's side neither the uplink nor a cluster's.
                _ => other.client = Side::tunnel(u16::MAX, 5),
            }
            prop_assert_eq!(names.pack(&other), None);
        }

        /// The lookups' comparisons in place agree with building the key
        /// and comparing it: for a flow's own keys, and for each with any
        /// one field but its padding changed (see `Names::is_forward`).
        #[test]
        fn a_key_is_compared_in_place_as_it_would_be_built(
            backends in prop::collection::vec(1u16..4, 1..4),
            pick in (any::<u16>(), any::<u16>(), 0u16..3),
            client in prop::option::of((0u16..3, 0u16..2)),
            rest in (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>(), 0u8..5),
            field in 0usize..8,
        ) {
            let (names, flow, packed) = packed_flow(&backends, pick, client, rest);
            let change = |mut key: FlowKey| {
                match field {
                    0 => key.src[15] ^= 1,
                    1 => key.dst[0] ^= 1,
                    2 => key.src_port ^= 1,
                    3 => key.dst_port ^= 1,
                    4 => key.proto ^= 1,
                    5 => key.tunnel ^= 1,
                    6 => key.tunnel = UPLINK,
                    _ => {}
                }
                key
            };
            for key in [flow.forward, change(flow.forward)] {
                let built = names.forward_key(&packed);
                prop_assert_eq!(names.is_forward(&packed, &key), built == Some(key));
            }
            for key in [flow.reverse, change(flow.reverse)] {
                let built = names.reverse_key(&packed).map(|(k, _)| k);
                prop_assert_eq!(names.is_reverse(&packed, &key), built == Some(key));
            }
        }
    }
}
