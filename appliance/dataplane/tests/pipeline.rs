//! The fixture table through the balancer: every branch, whole frames
//! compared with what etherparse builds, a diff by layer on failure.

use rialto_dataplane::{OwnedFrame, Pipeline, Verdict};
use rialto_fixtures::{self as fixtures, Fixture};

/// Runs the table on one fresh worker; returns each step's verdict and frame.
fn run(table: &[Fixture]) -> Vec<(Verdict, Vec<u8>)> {
    let mut pipeline = Pipeline::balance(fixtures::tables(), 0, 1, fixtures::NODE_MAC);
    table
        .iter()
        .map(|f| {
            let mut frame = OwnedFrame::new(&f.input);
            let verdict = frame.with(|buf| pipeline.process_frame(buf, 1_000_000_000));
            (verdict, frame.data().to_vec())
        })
        .collect()
}

#[test]
fn fixture_table() {
    let table = fixtures::table();
    let mut failures = Vec::new();
    for (f, (verdict, output)) in table.iter().zip(run(&table)) {
        if verdict != f.verdict {
            failures.push(format!(
                "{}: verdict {verdict:?}, expected {:?}",
                f.name, f.verdict
            ));
        } else if let Some(expected) = &f.output
            && *expected != output
        {
            failures.push(format!(
                "{}: frame differs\n{}",
                f.name,
                fixtures::diff(expected, &output)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

/// With two workers, a reply to a SNAT port in the other worker's slice is
/// handed to that worker as it came; the owner does not hand it on.
#[test]
fn replies_go_to_the_worker_owning_the_snat_port() {
    use fixtures::{Ip, L4};
    use rialto_dataplane::DropReason;
    // Ports 1024-65535 in two slices: worker 1's starts at 33280.
    let reply = fixtures::ip(
        Ip::V4 {
            src: fixtures::POD,
            dst: fixtures::SNAT,
            ttl: 64,
        },
        L4::Udp(7007, 40000),
        b"answer",
    );
    let inner = fixtures::eth(fixtures::NODE_MAC, fixtures::POD_SIDE_MAC, &reply);
    let outer = Ip::V4 {
        src: fixtures::EAST_VTEP,
        dst: fixtures::NODE_VTEP,
        ttl: 64,
    };
    let input = fixtures::vxlan(
        fixtures::NODE_MAC,
        fixtures::ROUTER_MAC,
        outer,
        7,
        100,
        &inner,
    );
    for (worker, expected) in [
        (0, Verdict::Handoff(1)),
        (1, Verdict::Drop(DropReason::NoFlow)),
    ] {
        let mut pipeline = Pipeline::balance(fixtures::tables(), worker, 2, fixtures::NODE_MAC);
        let mut frame = OwnedFrame::new(&input);
        let verdict = frame.with(|buf| pipeline.process_frame(buf, 1_000_000_000));
        assert_eq!(verdict, expected, "worker {worker}");
        assert_eq!(
            frame.data(),
            input,
            "worker {worker} leaves the frame as it came"
        );
    }
}
