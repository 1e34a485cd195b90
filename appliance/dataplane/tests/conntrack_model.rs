//! The flow table against a reference model (proptest): random inserts,
//! lookups, touches, sweeps, time passing and reloads on a small table
//! (8 slots, 12 SNAT ports, short timeouts), so that it fills, evicts,
//! runs out of ports and expires all the time. After every operation:
//! - a flow has exactly one forward and one reverse entry: each finds it,
//!   and no two flows share a key or a SNAT port;
//! - every SNAT port is either free or held by exactly one flow;
//! - the table holds only flows the model knows, and every flow the model
//!   holds that has not expired, but for the one a full table evicted;
//! - no lookup returns an expired flow;
//! - the per-backend counts and the table's statistics add up.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use proptest::prelude::*;
use rialto_dataplane::{
    pipeline::{
        conntrack::{
            Conntrack, Direction, Flow, FlowKey, InsertError, Names, Side, TcpState, UPLINK,
        },
        packet::{TCP, mapped},
        snat::SnatPorts,
    },
    wire::tcp::flags,
};
use rialto_tables::{
    Endpoint, FlowContext, Proto, SnatPool, Timeouts,
    context::{ContextCluster, ContextService},
};

const CAPACITY: usize = 8;
const PORTS: (u16, u16) = (1000, 1011);
const TIMEOUTS: Timeouts = Timeouts {
    tcp_syn: 5,
    tcp_established: 40,
    tcp_closing: 3,
    udp: 7,
    icmp: 7,
};
/// Services and their backends' counts, for the per-backend counts.
const LAYOUT: [usize; 2] = [3, 2];

#[derive(Clone, Debug)]
enum Op {
    /// A packet from client `port`: looked up, and a new flow if none, to
    /// `backend` of `service`.
    Packet {
        port: u16,
        service: u32,
        backend: u32,
        flags: u8,
    },
    /// A reply to client `port`'s flow, if there is one.
    Reply {
        port: u16,
        flags: u8,
    },
    Advance(u32),
    Sweep(usize),
    /// A reload that removes every flow to one backend.
    Remove {
        service: u32,
        backend: u32,
    },
    /// A reload to a pool of fewer ports: flows on the others go.
    Shrink(u16),
}

fn ops() -> impl Strategy<Value = Op> {
    let tcp_flags = prop::sample::select(vec![
        flags::SYN,
        flags::ACK,
        flags::ACK | flags::PSH,
        flags::FIN | flags::ACK,
        flags::RST,
        flags::SYN | flags::ACK,
    ]);
    prop_oneof![
        6 => (0u16..16, 0u32..2, 0u32..3, tcp_flags.clone()).prop_map(|(port, service, backend, flags)| Op::Packet {
            port,
            service,
            backend: backend % LAYOUT[service as usize] as u32,
            flags,
        }),
        3 => (0u16..16, tcp_flags).prop_map(|(port, flags)| Op::Reply { port, flags }),
        2 => (0u32..12).prop_map(Op::Advance),
        1 => (1usize..6).prop_map(Op::Sweep),
        1 => (0u32..2, 0u32..3).prop_map(|(service, backend)| Op::Remove {
            service,
            backend: backend % LAYOUT[service as usize] as u32,
        }),
        1 => (4u16..12).prop_map(Op::Shrink),
    ]
}

/// What the model remembers of a flow.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    reverse: FlowKey,
    service: u32,
    backend: u32,
    state: TcpState,
    expires: u32,
}

fn pool(last: u16) -> SnatPool {
    SnatPool {
        v4: vec!["198.18.200.1".parse().unwrap()],
        v6: vec![],
        ports: (PORTS.0, last),
    }
}

/// What the table's slots are packed under: the services of [`LAYOUT`]
/// (one VIP), their backends (one address, in the cluster of VNI 100), the
/// pool's address.
fn names() -> Names {
    let context = FlowContext {
        clusters: vec![ContextCluster {
            name: "c0".into(),
            vni: 100,
            gateways: vec![IpAddr::from([198, 18, 2, 1])],
        }],
        services: (LAYOUT.iter())
            .map(|&n| ContextService {
                vip: Endpoint {
                    addr: IpAddr::from([198, 18, 100, 1]),
                    port: 80,
                    proto: Proto::Tcp,
                },
                backends: vec![(SocketAddr::from(([198, 19, 0, 5], 8080)), 0); n],
            })
            .collect(),
    };
    Names::new(&context, &[IpAddr::from([198, 18, 200, 1])])
}

fn forward(port: u16) -> FlowKey {
    FlowKey {
        src: mapped([198, 18, 0, 2]),
        dst: mapped([198, 18, 100, 1]),
        src_port: 40_000 + port,
        dst_port: 80,
        proto: TCP,
        tunnel: UPLINK,
        pad: [0; 3],
    }
}

/// The model's own reading of the timeouts and of TCP's states (RFC 9293,
/// closing per direction).
fn next(state: TcpState, reply: bool, bits: u8) -> TcpState {
    const SYN_SENT: TcpState = TcpState::SYN_SENT;
    const ESTABLISHED: TcpState = TcpState::ESTABLISHED;
    const CLIENT_CLOSED: TcpState = TcpState::CLIENT_CLOSED;
    const BACKEND_CLOSED: TcpState = TcpState::BACKEND_CLOSED;
    const CLOSING: TcpState = TcpState::CLOSING;
    if bits & flags::RST != 0 {
        return CLOSING;
    }
    if bits & flags::FIN != 0 {
        return match (state, reply) {
            (CLIENT_CLOSED, true) | (BACKEND_CLOSED, false) | (CLOSING, _) => CLOSING,
            (_, false) => CLIENT_CLOSED,
            (_, true) => BACKEND_CLOSED,
        };
    }
    match (state, reply, bits & flags::SYN != 0) {
        (CLOSING, false, true) => SYN_SENT,
        (SYN_SENT, false, false) if bits & flags::ACK != 0 => ESTABLISHED,
        (state, _, _) => state,
    }
}

fn timeout(state: TcpState) -> u32 {
    match state {
        TcpState::SYN_SENT => TIMEOUTS.tcp_syn,
        TcpState::CLOSING => TIMEOUTS.tcp_closing,
        _ => TIMEOUTS.tcp_established,
    }
}

/// Looks `key` up in the table and the model alike; the model's flow it
/// found (by its forward key), checking they agree.
fn look_up(
    table: &mut Conntrack,
    model: &mut HashMap<FlowKey, Model>,
    key: &FlowKey,
    now: u32,
) -> Result<Option<(u32, Direction, FlowKey)>, TestCaseError> {
    let found = table.lookup(key, now);
    let expected = model
        .iter()
        .find(|(f, m)| *f == key || m.reverse == *key)
        .map(|(f, m)| (*f, m.expires >= now));
    match (found, expected) {
        (Some((id, direction)), Some((f, true))) => {
            let flow = table.flow(id);
            prop_assert_eq!(flow.forward, f, "the flow found is the model's");
            let reply = direction == Direction::Reply;
            prop_assert_eq!(reply, flow.reverse == *key);
            Ok(Some((id, direction, f)))
        }
        (None, Some((f, false))) => {
            model.remove(&f);
            Ok(None)
        }
        (None, None) => Ok(None),
        // An expired flow the model still had, and the table had already
        // dropped (swept), is gone from both now.
        (None, Some((f, true))) => {
            prop_assert!(
                table.iter().all(|(_, fl)| fl.forward != f),
                "a live flow not found by its key"
            );
            Err(TestCaseError::fail(format!(
                "a live flow of the model is gone: {f:?}"
            )))
        }
        (Some(_), expected) => Err(TestCaseError::fail(format!(
            "found a flow the model has as {expected:?} (expired or unknown)"
        ))),
    }
}

/// The invariants of the module docs.
fn check(
    table: &Conntrack,
    model: &mut HashMap<FlowKey, Model>,
    now: u32,
    evicted: Option<usize>,
) -> Result<(), TestCaseError> {
    let flows: Vec<(u32, Flow)> = table.iter().collect();
    let forwards: HashSet<_> = flows.iter().map(|(_, f)| f.forward.src_port).collect();
    let reverses: HashSet<_> = flows.iter().map(|(_, f)| f.reverse.dst_port).collect();
    prop_assert_eq!(forwards.len(), flows.len(), "forward keys are distinct");
    prop_assert_eq!(reverses.len(), flows.len(), "SNAT ports are distinct");
    for (_, f) in &flows {
        let m = model.get(&f.forward);
        prop_assert!(
            m.is_some(),
            "the table holds a flow the model does not: {:?}",
            f
        );
        let m = m.unwrap();
        prop_assert_eq!(&f.reverse, &m.reverse);
        prop_assert_eq!((f.state, f.expires), (m.state, m.expires));
    }
    // Flows the table dropped: expired ones (swept), and at most one live
    // one when a full table made room.
    let held: HashSet<FlowKey> = flows.iter().map(|(_, f)| f.forward).collect();
    let gone: Vec<FlowKey> = model
        .keys()
        .filter(|k| !held.contains(k))
        .copied()
        .collect();
    let live_gone = gone.iter().filter(|k| model[*k].expires >= now).count();
    prop_assert!(
        live_gone <= evicted.unwrap_or(0),
        "{live_gone} live flows lost"
    );
    for k in gone {
        model.remove(&k);
    }
    // Every port is free or held once.
    let free: usize = table
        .snat()
        .free()
        .map(|(_, proto, n)| if proto == TCP { n } else { 0 })
        .sum();
    prop_assert_eq!(
        free + flows.len(),
        table.snat().slice_len(),
        "ports free or held"
    );
    // The counts add up.
    let mut counts = [vec![0u32; LAYOUT[0]], vec![0u32; LAYOUT[1]]];
    for (_, f) in &flows {
        counts[f.service as usize][f.backend_index as usize] += 1;
    }
    prop_assert_eq!(table.per_backend(), &counts[..]);
    let stats = table.stats();
    prop_assert_eq!(stats.live, flows.len() as u64);
    prop_assert_eq!(
        stats.created - stats.expired - stats.evicted - stats.reload_removed,
        stats.live,
        "created = expired + evicted + removed + live: {:?}",
        stats
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_table_agrees_with_its_model(script in proptest::collection::vec(ops(), 1..120)) {
        let mut table = Conntrack::new(CAPACITY, SnatPorts::new(&pool(PORTS.1), 0, 1), TIMEOUTS, names());
        table.recount(&LAYOUT);
        let mut model: HashMap<FlowKey, Model> = HashMap::new();
        let mut now = 1u32;
        for op in script {
            let mut evicted = None;
            match op {
                Op::Packet { port, service, backend, flags: bits } => {
                    let key = forward(port);
                    let id = match look_up(&mut table, &mut model, &key, now)? {
                        Some((id, _, _)) => id,
                        None if bits & (flags::SYN | flags::ACK | flags::RST) == flags::SYN => {
                            let full = table.iter().count() == CAPACITY;
                            let inserted = table.insert(false, TCP, u64::from(port), now, |snat, snat_port| Flow {
                                forward: key,
                                reverse: FlowKey {
                                    src: mapped([198, 19, 0, 5]),
                                    dst: snat,
                                    src_port: 8080,
                                    dst_port: snat_port,
                                    proto: TCP,
                                    tunnel: 100,
                                    pad: [0; 3],
                                },
                                client: Side::UPLINK,
                                backend: Side::tunnel(0, 0),
                                service,
                                backend_index: backend,
                                hash: u32::from(port),
                                sums: Default::default(),
                                state: TcpState::SYN_SENT,
                                expires: 0,
                            });
                            evicted = full.then_some(1);
                            match inserted {
                                Ok(id) => {
                                    let flow = table.flow(id);
                                    prop_assert_eq!(flow.expires, now + TIMEOUTS.tcp_syn);
                                    model.insert(key, Model {
                                        reverse: flow.reverse,
                                        service,
                                        backend,
                                        state: TcpState::SYN_SENT,
                                        expires: now + TIMEOUTS.tcp_syn,
                                    });
                                    id
                                }
                                Err(InsertError::Unnamed) => {
                                    return Err(TestCaseError::fail("the names name every flow made"));
                                }
                                Err(InsertError::SnatExhausted) => {
                                    // Only when every port is held.
                                    prop_assert_eq!(table.iter().count(), table.snat().slice_len());
                                    check(&table, &mut model, now, evicted)?;
                                    continue;
                                }
                            }
                        }
                        None => {
                            check(&table, &mut model, now, evicted)?;
                            continue;
                        }
                    };
                    table.touch(id, TCP, Direction::Forward, bits, now);
                    let m = model.get_mut(&key).unwrap();
                    m.state = next(m.state, false, bits);
                    m.expires = now + timeout(m.state);
                }
                Op::Reply { port, flags: bits } => {
                    let Some(reverse) = model.get(&forward(port)).map(|m| m.reverse) else {
                        continue;
                    };
                    if let Some((id, direction, f)) = look_up(&mut table, &mut model, &reverse, now)? {
                        prop_assert_eq!(direction, Direction::Reply);
                        table.touch(id, TCP, direction, bits, now);
                        let m = model.get_mut(&f).unwrap();
                        m.state = next(m.state, true, bits);
                        m.expires = now + timeout(m.state);
                    }
                }
                Op::Advance(seconds) => now += seconds,
                Op::Sweep(budget) => table.sweep(now, budget),
                Op::Remove { service, backend } => {
                    let remap = |f: &Flow| {
                        (f.service != service || f.backend_index != backend).then_some(*f)
                    };
                    table.reload(TIMEOUTS, None, Some((names(), &remap)));
                    model.retain(|_, m| m.service != service || m.backend != backend);
                }
                Op::Shrink(ports) => {
                    let last = PORTS.0 + ports - 1;
                    // The same names: no slot is packed again.
                    table.reload(TIMEOUTS, Some(SnatPorts::new(&pool(last), 0, 1)), None);
                    model.retain(|_, m| m.reverse.dst_port <= last);
                }
            }
            check(&table, &mut model, now, evicted)?;
        }
    }
}
