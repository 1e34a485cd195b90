//! The testbed scripts are idempotent: `up` twice builds one testbed, `down`
//! twice (or after a half-built one) leaves nothing behind.

use std::{process::Command, time::Duration};

use rialto_testbed::{Teardown, Within, ip, require_root, script as run};

/// How long a quick command (`ip`, `pgrep`) may take.
const QUICK: Duration = Duration::from_secs(10);

fn pair_sh(args: &[&str]) {
    run("pair.sh", args);
}

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output_by(QUICK);
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
    let _down = Teardown::new("pair.sh", &["down", &name]);

    pair_sh(&["up", &name, "2"]);
    pair_sh(&["up", &name, "2"]);
    assert_eq!(ours(&name), 2, "one node and one peer namespace");
    let link = ip(&format!("{name}-node"), &format!("-d link show {name}n"));
    assert!(link.contains("numrxqueues 2"), "{link}");

    pair_sh(&["down", &name]);
    pair_sh(&["down", &name]);
    assert_eq!(ours(&name), 0, "{}", namespaces());
}

#[test]
fn down_cleans_up_a_half_built_testbed() {
    require_root();
    let name = format!("rthalf{}", std::process::id() % 100_000);
    let _down = Teardown::new("pair.sh", &["down", &name]);
    let node = format!("{name}-node");
    assert!(
        Command::new("ip")
            .args(["netns", "add", &node])
            .output_by(QUICK)
            .status
            .success()
    );
    pair_sh(&["down", &name]);
    assert_eq!(ours(&name), 0, "{}", namespaces());
}

/// Processes started in the testbed's namespaces (the pods' servers).
fn processes_in(name: &str) -> usize {
    namespaces()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("{name}-")))
        .map(|ns| {
            let out = Command::new("ip")
                .args(["netns", "pids", ns])
                .output_by(QUICK);
            String::from_utf8_lossy(&out.stdout).lines().count()
        })
        .sum()
}

#[test]
fn topology_up_twice_then_down_leaves_no_namespace_and_no_server() {
    require_root();
    let name = format!("tt{}", std::process::id() % 100_000);
    let _down = Teardown::new("topology.sh", &["down", &name]);
    run("topology.sh", &["up", &name, "2"]);
    run("topology.sh", &["up", &name, "2"]);
    // Router, client, border, two gateways, four pods.
    assert_eq!(ours(&name), 9, "{}", namespaces());
    // Each pod runs an HTTP server and an iperf3 server.
    assert_eq!(processes_in(&name), 8);
    let servers = Command::new("pgrep")
        .args(["-f", &format!("rialto-testbed-{name}/")])
        .output_by(QUICK);
    assert_eq!(
        String::from_utf8_lossy(&servers.stdout).lines().count(),
        4,
        "HTTP servers"
    );
    run("topology.sh", &["down", &name]);
    run("topology.sh", &["down", &name]);
    assert_eq!(ours(&name), 0, "{}", namespaces());
    let servers = Command::new("pgrep")
        .args(["-f", &format!("rialto-testbed-{name}/")])
        .output_by(QUICK);
    assert!(servers.stdout.is_empty(), "the pods' servers are stopped");
}
