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
            pipeline.tick(f.now(), false);
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
    let missing: Vec<_> = DropReason::iter()
        .map(DropReason::name)
        .filter(|r| !seen.contains(r))
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
