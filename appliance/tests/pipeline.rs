//! The fixture table through the balancer: every branch, whole frames
//! compared with what etherparse builds, a diff by layer on failure.

use rialto::{
    fixtures::{self, Fixture},
    pipeline::{OwnedFrame, Pipeline, Verdict},
};

/// Runs the table on one fresh worker; returns each step's verdict and frame.
fn run(table: &[Fixture]) -> Vec<(Verdict, Vec<u8>)> {
    let mut pipeline = Pipeline::balance(fixtures::tables(), 0, 1, fixtures::NODE_MAC);
    table
        .iter()
        .map(|f| {
            let mut frame = OwnedFrame::new(&f.input);
            let verdict = frame.with(|buf| pipeline.process(buf, 1_000_000_000));
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
