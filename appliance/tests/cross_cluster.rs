//! The mission end to end on the cross-cluster testbed (`testbed/topology.sh`):
//! a client behind a router, Rialto on the border node, and two clusters
//! behind the kernel's own VXLAN devices whose pods use the same addresses.

use std::{collections::BTreeMap, process::Command};

use rialto_testbed::{Rialto, Topology, netns_command};

const BIN: &str = env!("CARGO_BIN_EXE_rialto");
const REQUESTS: usize = 400;

/// Every pod answers HTTP with "pN in cluster C (ADDR)".
fn requests(topology: &Topology, count: usize) -> BTreeMap<String, usize> {
    let urls = vec!["http://198.18.100.1/"; count];
    let out = netns_command(&topology.ns("client"), "curl")
        .args(["-s", "--max-time", "5"])
        .args(&urls)
        .output()
        .unwrap();
    let mut answers = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        *answers.entry(line.to_owned()).or_default() += 1;
    }
    answers
}

#[test]
fn requests_reach_pods_of_both_clusters_in_the_weights_proportions() {
    let topology = Topology::up(2);
    // Weights 3:1 in each cluster, the same for both clusters.
    let config = topology
        .config()
        .replace(
            r#"{ cluster = "east", addr = "198.19.0.10:80" }"#,
            r#"{ cluster = "east", addr = "198.19.0.10:80", weight = 3 }"#,
        )
        .replace(
            r#"{ cluster = "west", addr = "198.19.0.10:80" }"#,
            r#"{ cluster = "west", addr = "198.19.0.10:80", weight = 3 }"#,
        );
    let path = std::env::temp_dir().join(format!("rialto-{}.toml", topology.name));
    std::fs::write(&path, config).unwrap();
    let rialto = Rialto::start(
        BIN,
        &topology.ns("border"),
        &["--iface", "up0", "--config", path.to_str().unwrap()],
    );
    let answers = requests(&topology, REQUESTS);
    let (status, summary) = rialto.terminate();
    std::fs::remove_file(&path).unwrap();
    assert!(status.success(), "{summary}");

    let answered: usize = answers.values().sum();
    assert_eq!(answered, REQUESTS, "every request answered: {answers:?}");
    // Expected shares 3/8, 1/8, 3/8, 1/8. Each connection's source port is
    // random, so each pod's count is binomial: accept 4 standard deviations.
    for (pod, share) in [
        ("p1 in cluster east (198.19.0.10)", 3.0 / 8.0),
        ("p2 in cluster east (198.19.0.11)", 1.0 / 8.0),
        ("p1 in cluster west (198.19.0.10)", 3.0 / 8.0),
        ("p2 in cluster west (198.19.0.11)", 1.0 / 8.0),
    ] {
        let n = REQUESTS as f64;
        let expected = n * share;
        let tolerance = 4.0 * (n * share * (1.0 - share)).sqrt();
        let got = answers.get(pod).copied().unwrap_or(0) as f64;
        assert!(
            (got - expected).abs() <= tolerance,
            "{pod}: {got} answers, expected {expected} ± {tolerance:.0}: {answers:?}"
        );
    }
    let created: u64 = summary["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["balance"]["flows"]["created"].as_u64().unwrap())
        .sum();
    assert_eq!(
        created, REQUESTS as u64,
        "one flow per connection: {summary}"
    );
    // Nothing of the test is left in the pods' namespaces' neighbours: the
    // tunnel carried no ARP (static entries on both sides).
    let neigh = Command::new("ip")
        .args(["-n", &topology.ns("east"), "neigh", "show", "dev", "vx100"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&neigh.stdout).contains("PERMANENT"),
        "the gateway reaches Rialto through its static neighbour entry"
    );
}
