//! `rialto check`: the real binary on the example config and a bad one.

use std::{path::Path, process::Command, time::Duration};

use rialto_testbed::Within;

#[test]
fn check_reports_every_problem_and_fails() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let out = Command::new(env!("CARGO_BIN_EXE_rialto"))
        .current_dir(&rules)
        .args(["check", "example.toml", "tests/bad/many.toml"])
        .output_by(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "a bad file fails the check");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "example.toml: ok: 3 service(s), 5 backend(s), 2 cluster(s)\n"
    );
    let expected = std::fs::read_to_string(rules.join("tests/bad/many.err"))
        .unwrap()
        .replace("bad/many.toml", "tests/bad/many.toml");
    assert_eq!(String::from_utf8_lossy(&out.stderr), expected);
    assert_eq!(expected.lines().count(), 4, "four problems, all reported");

    let good = Command::new(env!("CARGO_BIN_EXE_rialto"))
        .current_dir(&rules)
        .args(["check", "example.toml"])
        .output_by(Duration::from_secs(30));
    assert!(good.status.success());
}
