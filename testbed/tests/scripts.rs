//! The testbed scripts are idempotent: `up` twice builds one testbed, `down`
//! twice (or after a half-built one) leaves nothing behind.

use std::process::Command;

use rialto_testbed::{require_root, workspace_root};

fn pair_sh(args: &[&str]) {
    let status = Command::new("bash")
        .arg(workspace_root().join("testbed/pair.sh"))
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "pair.sh {args:?} failed");
}

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ours(name: &str) -> usize {
    namespaces()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}-")))
        .count()
}

#[test]
fn up_twice_then_down_twice_leaves_nothing() {
    require_root();
    let name = format!("rtidem{}", std::process::id() % 100_000);

    pair_sh(&["up", &name, "2"]);
    pair_sh(&["up", &name, "2"]);
    assert_eq!(ours(&name), 2, "one node and one peer namespace");
    let link = Command::new("ip")
        .args([
            "-n",
            &format!("{name}-node"),
            "-d",
            "link",
            "show",
            &format!("{name}n"),
        ])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("numrxqueues 2"), "{link}");

    pair_sh(&["down", &name]);
    pair_sh(&["down", &name]);
    assert_eq!(ours(&name), 0, "{}", namespaces());
}

#[test]
fn down_cleans_up_a_half_built_testbed() {
    require_root();
    let name = format!("rthalf{}", std::process::id() % 100_000);
    let node = format!("{name}-node");
    assert!(
        Command::new("ip")
            .args(["netns", "add", &node])
            .status()
            .unwrap()
            .success()
    );
    pair_sh(&["down", &name]);
    assert_eq!(ours(&name), 0, "{}", namespaces());
}
