//! The fixture suites through the balancer: every branch, whole frames
//! compared with what etherparse builds, a diff by layer on failure; and
//! proof, by construction, that every drop reason and every ICMP path has
//! a step.

use std::collections::BTreeSet;

use rialto_dataplane::{DropReason, OwnedFrame, Pipeline, Verdict, pipeline::BalanceStats};
use rialto_fixtures::{self as fixtures, Suite};
use strum::IntoEnumIterator;

/// Runs a suite on a fresh worker as the live loop does (a tick after
/// each frame); each step's verdict and frame, and the totals at the end.
fn run(suite: &Suite) -> (Vec<(Verdict, Vec<u8>)>, BalanceStats) {
    let tables = fixtures::compile(&suite.config);
    let mut pipeline = Pipeline::balance(tables, suite.worker, suite.workers, fixtures::NODE_MAC);
    let outcomes = suite
        .steps
        .iter()
        .map(|f| {
            let mut frame = OwnedFrame::with_headroom(&f.input, f.headroom).handed(f.hops);
            let verdict = frame.with(|buf| pipeline.process_frame(buf, f.now()));
            pipeline.tick(f.now());
            (verdict, frame.data().to_vec())
        })
        .collect();
    (outcomes, pipeline.stats().expect("a balancer"))
}

#[test]
fn fixture_suites() {
    let mut failures = Vec::new();
    let mut steps = 0;
    for suite in fixtures::suites() {
        assert!(
            suite.steps.windows(2).all(|w| w[0].at <= w[1].at),
            "{}: steps in order of time",
            suite.name
        );
        let (outcomes, _) = run(&suite);
        for (f, (verdict, output)) in suite.steps.iter().zip(outcomes) {
            steps += 1;
            if verdict != f.verdict {
                failures.push(format!(
                    "{} / {}: verdict {verdict:?}, expected {:?}",
                    suite.name, f.name, f.verdict
                ));
            } else if let Some(expected) = &f.output
                && *expected != output
            {
                failures.push(format!(
                    "{} / {}: frame differs\n{}",
                    suite.name,
                    f.name,
                    fixtures::diff(expected, &output)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {steps} steps failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every reason the pipeline can drop a frame for has a step that expects
/// it: a new reason without a step fails here.
#[test]
fn every_drop_reason_has_a_step() {
    let seen: BTreeSet<&str> = fixtures::suites()
        .iter()
        .flat_map(|s| &s.steps)
        .filter_map(|f| match f.verdict {
            Verdict::Drop(reason) => Some(reason.name()),
            _ => None,
        })
        .collect();
    // No frame makes a flow its slot cannot name: the config check refuses
    // the tables that would.
    let unreachable = [DropReason::Unnamed.name()];
    let missing: Vec<_> = DropReason::iter()
        .map(DropReason::name)
        .filter(|r| !seen.contains(r) && !unreachable.contains(r))
        .collect();
    assert!(missing.is_empty(), "no step drops a frame as {missing:?}");
    let handed: usize = fixtures::suites()
        .iter()
        .flat_map(|s| &s.steps)
        .filter(|f| matches!(f.verdict, Verdict::Handoff(_)))
        .count();
    assert!(handed >= 2, "a reply and an ICMP error are handed over");
}

/// The main suite makes and translates ICMP errors both ways and for both
/// families, and its flows expire, close and get evicted: its counters
/// say so.
#[test]
fn the_suites_take_every_icmp_path_and_flows_end_every_way() {
    let suites = fixtures::suites();
    let main = suites.iter().find(|s| s.name == "main").unwrap();
    let (_, stats) = run(main);
    let c = stats.counters;
    assert!(c.icmp_time_exceeded >= 2, "{c:?}");
    assert!(c.icmp_too_big >= 2, "IPv4 and IPv6: {c:?}");
    assert!(
        c.icmp_translated >= 5,
        "port unreachable, frag needed, time exceeded, packet too big, from the client: {c:?}"
    );
    assert!(
        stats.flows.expired >= 3,
        "the handshake, the closed and the UDP flow: {stats:?}"
    );
    let evicting = suites
        .iter()
        .find(|s| s.name == "a table of two flows")
        .unwrap();
    assert_eq!(run(evicting).1.flows.evicted, 2);
}

/// A service that resets the connections of a backend that fails its
/// checks: once the backend is marked failed (as the checker's health
/// marks it), the client's next segment is answered with a reset from the
/// VIP (`<SEQ=SEG.ACK><CTL=RST>`), the flow is gone, and the next segment
/// finds none. Without `reset_on_down`, the connection goes on.
#[test]
fn a_failed_backend_s_connections_are_reset_where_the_service_says_so() {
    use fixtures::{CLIENT, Ip, L4, WEB, from_router, ip, tcp4_reset, to_router};
    let syn = ip(
        Ip::V4 {
            src: CLIENT,
            dst: WEB,
            ttl: 64,
        },
        L4::Tcp(40100, 80, "S", 1),
        b"",
    );
    let ack = ip(
        Ip::V4 {
            src: CLIENT,
            dst: WEB,
            ttl: 64,
        },
        L4::Tcp(40100, 80, "A", 2),
        b"",
    );
    let now = fixtures::START * 1_000_000_000;
    for reset in [true, false] {
        let config = fixtures::CONFIG.replace(
            "check = { kind = \"http\" }",
            &format!("check = {{ kind = \"http\" }}\nreset_on_down = {reset}"),
        );
        let tables = fixtures::compile(&config);
        let mut pipeline =
            Pipeline::balance(std::sync::Arc::clone(&tables), 0, 1, fixtures::NODE_MAC);
        let send = |pipeline: &mut Pipeline, frame: &[u8]| {
            let mut buf = OwnedFrame::new(frame);
            let verdict = buf.with(|f| pipeline.process_frame(f, now));
            (verdict, buf.data().to_vec())
        };
        assert_eq!(send(&mut pipeline, &from_router(&syn)).0, Verdict::Tx);
        // Web's one backend fails its checks.
        let mut healthy: Vec<Vec<bool>> = tables
            .services
            .iter()
            .map(|s| vec![true; s.backends.len()])
            .collect();
        healthy[0][0] = false;
        pipeline.reload(std::sync::Arc::new(tables.with_health(&healthy).unwrap()));
        let (verdict, out) = send(&mut pipeline, &from_router(&ack));
        let stats = pipeline.stats().expect("a balancer");
        if reset {
            assert_eq!(verdict, Verdict::Tx);
            let expected = to_router(&tcp4_reset((WEB, 80), (CLIENT, 40100), 1, None));
            assert_eq!(out, expected, "{}", fixtures::diff(&expected, &out));
            assert_eq!(stats.counters.reset_on_down, 1);
            assert_eq!(
                send(&mut pipeline, &from_router(&ack)).0,
                Verdict::Drop(DropReason::NoFlow)
            );
        } else {
            assert_eq!(verdict, Verdict::Tx, "forwarded to the backend still");
            assert!(out.len() > 100, "encapsulated");
            assert_eq!(stats.counters.reset_on_down, 0);
        }
    }
}

/// A reload whose tables name every flow as before (a health check's)
/// rewrites no slot: the flows' bytes and their generation of names stay;
/// one that changes what the indices name (a cluster's new gateway)
/// packs every slot again, under the next generation.
#[test]
fn a_health_check_s_reload_rewrites_no_slot() {
    let now = fixtures::START * 1_000_000_000;
    let tables = fixtures::compile(fixtures::CONFIG);
    let mut pipeline = Pipeline::balance(std::sync::Arc::clone(&tables), 0, 1, fixtures::NODE_MAC);
    for port in 40300..40310 {
        let syn = from_client(fixtures::WEB, fixtures::L4::Tcp(port, 80, "S", 1), b"");
        assert_eq!(
            OwnedFrame::new(&syn).with(|f| pipeline.process_frame(f, now)),
            Verdict::Tx
        );
    }
    let slots = |pipeline: &mut Pipeline| {
        let (slots, generation) = pipeline.storage_mut().expect("a balancer");
        (slots.to_vec(), generation)
    };
    let before = slots(&mut pipeline);
    let counts = pipeline.per_backend();
    let mut healthy: Vec<Vec<bool>> = (tables.services.iter())
        .map(|s| vec![true; s.backends.len()])
        .collect();
    healthy[0][0] = false;
    pipeline.reload(std::sync::Arc::new(tables.with_health(&healthy).unwrap()));
    assert!(
        slots(&mut pipeline) == before,
        "a health check's reload rewrote slots"
    );
    assert_eq!(
        pipeline.per_backend(),
        counts,
        "each backend's flows counted still"
    );
    let mut changed = (*tables).clone();
    changed.clusters[0]
        .gateways
        .push(std::net::IpAddr::from([198, 18, 99, 1]));
    pipeline.reload(std::sync::Arc::new(changed));
    let (after, generation) = slots(&mut pipeline);
    assert_eq!(
        generation,
        before.1 ^ 1,
        "packed again under the next generation"
    );
    assert_eq!(
        pipeline.stats().expect("a balancer").flows.live,
        10,
        "every flow kept"
    );
    assert!(after != before.0);
}

/// A frame from the fixtures' client to `dst` through the router, TTL 64.
fn from_client(dst: [u8; 4], l4: fixtures::L4, payload: &[u8]) -> Vec<u8> {
    let v4 = fixtures::Ip::V4 {
        src: fixtures::CLIENT,
        dst,
        ttl: 64,
    };
    fixtures::from_router(&fixtures::ip(v4, l4, payload))
}

/// A new connection on the 5-tuple of one that closed (the client reused
/// its port) is balanced anew: after the only backend of web failed its
/// checks, the SYN that reopens a closed connection's flow is refused from
/// the VIP, as any new connection is, not sent to that backend.
#[test]
fn a_port_reused_after_a_close_is_balanced_anew() {
    let segment = |flags| from_client(fixtures::WEB, fixtures::L4::Tcp(40200, 80, flags, 1), b"");
    let now = fixtures::START * 1_000_000_000;
    let tables = fixtures::compile(fixtures::CONFIG);
    let mut pipeline = Pipeline::balance(std::sync::Arc::clone(&tables), 0, 1, fixtures::NODE_MAC);
    let mut send = |frame: &[u8]| OwnedFrame::new(frame).with(|f| pipeline.process_frame(f, now));
    assert_eq!(send(&segment("S")), Verdict::Tx);
    assert_eq!(send(&segment("R")), Verdict::Tx, "the reset closes it");
    let mut healthy: Vec<Vec<bool>> = (tables.services.iter())
        .map(|s| vec![true; s.backends.len()])
        .collect();
    healthy[0][0] = false;
    pipeline.reload(std::sync::Arc::new(tables.with_health(&healthy).unwrap()));
    let verdict = OwnedFrame::new(&segment("S")).with(|f| pipeline.process_frame(f, now));
    assert_eq!(verdict, Verdict::Tx, "answered with a reset");
    let stats = pipeline.stats().expect("a balancer");
    assert_eq!(stats.counters.no_backend_refused, 1, "{stats:?}");
    assert_eq!(stats.flows.live, 0, "{stats:?}");
}

/// `tables` as node 1 of a fleet (no peers yet): a balancer notes its
/// flows for the peers.
fn in_fleet(tables: &rialto_tables::Snapshot) -> rialto_tables::Snapshot {
    rialto_tables::Snapshot {
        fleet: Some(rialto_tables::Fleet {
            node: 1,
            listen: "198.18.1.1:7946".parse().unwrap(),
            key: vec![7; 32],
            vtep_prefix: ("198.18.3.0".parse().unwrap(), 24),
            peers: Vec::new(),
        }),
        ..tables.clone()
    }
}

/// In a fleet, a connection the fast path opens (a SYN to a VIP) is noted
/// for the peers as the general path notes it, and its SYN leaves the same.
#[test]
fn a_connection_the_fast_path_opens_is_noted_as_the_general_path_notes_it() {
    use std::sync::Arc;

    let tables = Arc::new(in_fleet(&fixtures::compile(fixtures::CONFIG)));
    let now = fixtures::START * 1_000_000_000;
    let syn = from_client(fixtures::WEB, fixtures::L4::Tcp(40500, 80, "S", 1), b"");
    let opened = |fast: bool| {
        let mut pipeline = Pipeline::balance(Arc::clone(&tables), 0, 1, fixtures::NODE_MAC);
        let Pipeline::Balance(balancer) = &mut pipeline else {
            unreachable!("a balancer")
        };
        balancer.set_fast_path(fast);
        let mut frame = OwnedFrame::new(&syn);
        let verdict = frame.with(|f| match fast {
            true => balancer.process_fast(f, now),
            false => Some(balancer.process(f, now)),
        });
        let noted: Vec<_> = balancer.changes().expect("in a fleet").drain().collect();
        (verdict, frame.data().to_vec(), noted)
    };
    let (fast, general) = (opened(true), opened(false));
    assert_eq!(fast.0, Some(Verdict::Tx), "the fast path opened it");
    assert_eq!(fast.2.len(), 1, "the new flow noted");
    assert_eq!(fast, general);
}

/// In a fleet, a datagram of a flow a peer made, adopted here by the
/// worker that owns its SNAT port, is found wherever RSS brings it: a
/// worker without the flow hands it on, and the owner forwards it as the
/// peer did (same backend, same SNAT address and port: the same frame).
/// A datagram of no flow goes round every worker before the last makes
/// its flow; alone (no fleet), the first worker makes it at once.
#[test]
fn a_peers_udp_flow_is_found_on_the_worker_that_adopted_it() {
    use std::sync::Arc;

    use rialto_dataplane::pipeline::{replica::Adopted, snat::SnatPorts};
    let datagram = |port| from_client(fixtures::ECHO, fixtures::L4::Udp(port, 7), b"query");
    let now = fixtures::START * 1_000_000_000;
    let alone = fixtures::compile(fixtures::CONFIG);
    let mut a_tables = in_fleet(&alone);
    // The fleet's SNAT addresses: A's and B's (as compiling the fleet's
    // peers would give).
    let b_snat: std::net::IpAddr = "198.18.201.1".parse().unwrap();
    a_tables.snat_addrs.insert(b_snat);
    let a_tables = Arc::new(a_tables);
    // Node B: the same services, another SNAT address.
    let mut b_tables = (*a_tables).clone();
    b_tables.snat.v4 = vec!["198.18.201.1".parse().unwrap()];
    let b_tables = Arc::new(b_tables);
    let workers = |tables: &Arc<rialto_tables::Snapshot>| -> Vec<Pipeline> {
        (0..2)
            .map(|w| Pipeline::balance(Arc::clone(tables), w, 2, fixtures::NODE_MAC))
            .collect()
    };
    let (mut a, mut b, mut solo) = (workers(&a_tables), workers(&b_tables), workers(&alone));
    let send = |worker: &mut Pipeline, frame: &[u8], hops| {
        let mut f = OwnedFrame::new(frame).handed(hops);
        let verdict = f.with(|f| worker.process_frame(f, now));
        (verdict, f.data().to_vec())
    };

    // On node A, round its workers and made by the last.
    assert_eq!(send(&mut a[1], &datagram(40300), 0).0, Verdict::Handoff(0));
    let (verdict, on_a) = send(&mut a[0], &datagram(40300), 1);
    assert_eq!(verdict, Verdict::Tx);
    let replica = a[0]
        .changes()
        .unwrap()
        .drain()
        .next()
        .expect("the new flow noted");
    let owner = SnatPorts::new(&b_tables.snat, 0, 2).owner(replica.flow.reverse.dst_port);
    // On an address that is no SNAT address of the fleet's: refused.
    let mut stranger = replica;
    stranger.flow.reverse.dst = rialto_dataplane::pipeline::packet::mapped([198, 18, 202, 1]);
    assert_eq!(
        b[owner as usize].adopt(&stranger, now),
        Some(Adopted::NotHere)
    );
    assert_eq!(b[owner as usize].adopt(&replica, now), Some(Adopted::Added));
    let other = 1 - owner;
    assert_eq!(
        send(&mut b[other as usize], &datagram(40300), 0).0,
        Verdict::Handoff(owner)
    );
    assert_eq!(
        send(&mut b[owner as usize], &datagram(40300), 1),
        (Verdict::Tx, on_a)
    );

    // A datagram of no flow: round the workers, made by the last.
    assert_eq!(send(&mut b[0], &datagram(40301), 0).0, Verdict::Handoff(1));
    assert_eq!(send(&mut b[1], &datagram(40301), 1).0, Verdict::Tx);
    assert_eq!(b[1].stats().unwrap().flows.created, 1);
    // Alone: made where it comes in.
    assert_eq!(send(&mut solo[0], &datagram(40301), 0).0, Verdict::Tx);
}

/// `flows` UDP flows from the fixtures' client to echo, opened at `now`.
fn open_udp_flows(pipeline: &mut Pipeline, flows: u16, now: u64) {
    for port in 0..flows {
        let input = from_client(fixtures::ECHO, fixtures::L4::Udp(10_000 + port, 7), b"");
        let mut frame = OwnedFrame::new(&input);
        assert_eq!(frame.with(|f| pipeline.process_frame(f, now)), Verdict::Tx);
    }
}

/// The sweep is paced by the time, not by the batches: a worker ticking
/// every millisecond visits about a slot a tick, and one ticking every
/// 100 ms (asleep, its poll timing out) more a tick; either way every slot
/// that has held a flow is visited about once a second (2^30 ns), so the
/// expired flows, which no lookup finds here, are gone within three
/// seconds of their expiry (a second of rounding to whole seconds, and a
/// pass of the hand of 2^30 ns).
#[test]
fn the_sweep_visits_every_slot_about_once_a_second_however_often_the_worker_ticks() {
    const FLOWS: u16 = 1_000;
    const SECOND: u64 = 1_000_000_000;
    // The fixtures' UDP timeout: the config's default.
    const UDP_TIMEOUT: u64 = 60;
    for every_ms in [1, 100] {
        let mut pipeline = Pipeline::balance(fixtures::tables(), 0, 1, fixtures::NODE_MAC);
        let start = SECOND;
        open_udp_flows(&mut pipeline, FLOWS, start);
        let flows = |p: &Pipeline| p.stats().expect("a balancer").flows;
        assert_eq!(flows(&pipeline).live, u64::from(FLOWS));
        let (mut now, mut most) = (start, 0);
        while flows(&pipeline).live > 0 {
            let before = flows(&pipeline).expired;
            pipeline.tick(now);
            let expired = flows(&pipeline).expired;
            most = most.max(expired - before);
            assert!(
                now > start + UDP_TIMEOUT * SECOND || expired == 0,
                "ticks every {every_ms} ms: {expired} flows swept before they expired"
            );
            assert!(
                now <= start + (UDP_TIMEOUT + 3) * SECOND,
                "ticks every {every_ms} ms: {} flows left 3 s after they expired",
                flows(&pipeline).live
            );
            now += every_ms * 1_000_000;
        }
        // A tick's share of a pass: the slots' count over the period's
        // ticks, and one for the rounding.
        let share = u64::from(FLOWS) * every_ms * 1_000_000 / (1 << 30) + 1;
        assert!(
            most <= share,
            "ticks every {every_ms} ms: {most} flows swept at one tick, more than {share}"
        );
    }
}

/// The first batch starts the sweep's clock, and a batch long after the
/// last (a worker waking, a restore) visits at most 16,384 slots, not
/// the whole table at once.
#[test]
fn a_batch_long_after_the_last_sweeps_a_bounded_share() {
    const FLOWS: u16 = 20_000;
    const SECOND: u64 = 1_000_000_000;
    let config = fixtures::CONFIG.replace("flows_per_worker = 4096", "flows_per_worker = 32768");
    let mut pipeline = Pipeline::balance(fixtures::compile(&config), 0, 1, fixtures::NODE_MAC);
    let start = SECOND;
    open_udp_flows(&mut pipeline, FLOWS, start);
    let expired = |p: &Pipeline| p.stats().expect("a balancer").flows.expired;
    // The first batch, every flow expired long since: it only starts the
    // clock.
    let late = start + 1_000 * SECOND;
    pipeline.tick(late);
    assert_eq!(expired(&pipeline), 0, "the first batch sweeps nothing");
    // Long after: a whole pass is due, but a batch visits 16,384 slots.
    pipeline.tick(late + 100 * SECOND);
    assert_eq!(expired(&pipeline), 16_384);
    pipeline.tick(late + 100 * SECOND + 1_000_000);
    assert!(expired(&pipeline) < 16_384 + 40, "then a share again");
}
