//! A fleet of border nodes behind a router that runs BGP
//! (`testbed/fleet.sh`: Debian's BIRD on the router, ECMP by the 5-tuple,
//! BFD), each node's Rialto announcing the VIPs through a BIRD of its own
//! while it serves. Real clients from 50 addresses, real servers in the
//! pods of two clusters.

use std::{net::SocketAddr, time::Duration, time::Instant};

use rialto_testbed::{
    ECHO_SERVICES, Fleet, Load, LoadSpec, Rialto, echo_in_pods, http_get_from, in_netns,
    workers_total,
};

const BIN: &str = env!("CARGO_BIN_EXE_rialto");
const WEB: &str = "198.18.100.1";
const IPERF: &str = "198.18.100.2";
/// The longest a connection may go without a round trip when a node is
/// lost.
const STALL: Duration = Duration::from_secs(2);

/// One node's Rialto, with its config file.
struct Node {
    rialto: Rialto,
    ns: String,
    config: std::path::PathBuf,
}

impl Node {
    fn start(fleet: &Fleet, i: u32, config: &str, extra: &[&str]) -> Self {
        let path = std::env::temp_dir().join(format!("rialto-{}-node{i}.toml", fleet.name));
        std::fs::write(&path, config).unwrap();
        Self::run(fleet, i, path, extra)
    }

    fn run(fleet: &Fleet, i: u32, config: std::path::PathBuf, extra: &[&str]) -> Self {
        let ns = fleet.ns(&format!("node{i}"));
        let args = [
            &["--iface", "up0", "--config", config.to_str().unwrap()][..],
            extra,
        ]
        .concat();
        let rialto = Rialto::start(BIN, &ns, &args);
        Self { rialto, ns, config }
    }

    fn get(&self, path: &str) -> serde_json::Value {
        rialto_testbed::api_json(&self.ns, path)
    }

    /// Flows this node created since it started.
    fn created(&self) -> u64 {
        workers_total(
            &self.get("/api/v1/status"),
            |w| &w["balance"]["flows"]["created"],
        )
    }

    fn stop(self) -> serde_json::Value {
        let (status, summary) = self.rialto.terminate();
        let _ = std::fs::remove_file(&self.config);
        assert!(status.success(), "{summary}");
        summary
    }

    /// Stops a node one of whose workers panicked: its exit status says
    /// so.
    fn stop_failed(self) {
        let (status, summary) = self.rialto.terminate();
        let _ = std::fs::remove_file(&self.config);
        assert_eq!(status.code(), Some(1), "{summary}");
    }

    /// Waits for this node's Rialto to exit by itself (drained), which it
    /// must do cleanly.
    fn wait_exit(self) {
        let (status, summary) = self.rialto.wait_exit();
        let _ = std::fs::remove_file(&self.config);
        assert!(status.success(), "{summary}");
    }
}

/// The two nodes of `fleet`, with the echo services and `extra`
/// arguments, both in the route to the web VIP; the pods' echo servers.
fn echo_nodes(fleet: &Fleet, extra: &[&str]) -> Vec<Node> {
    echo_in_pods(|pod| fleet.ns(pod));
    let nodes = (1..=2)
        .map(|i| Node::start(fleet, i, &(fleet.config(i) + ECHO_SERVICES), extra))
        .collect();
    await_next_hops(
        fleet,
        WEB,
        &[&next_hop(1), &next_hop(2)],
        Duration::from_secs(15),
    );
    nodes
}

/// Waits, within `timeout`, until the router's route to `vip` has the
/// next hops `want` (in any order); how long that took.
fn await_next_hops(fleet: &Fleet, vip: &str, want: &[&str], timeout: Duration) -> Duration {
    let start = Instant::now();
    let mut want: Vec<&str> = want.to_vec();
    want.sort_unstable();
    loop {
        let mut hops = fleet.next_hops(vip);
        hops.sort();
        if hops == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "the route to {vip}: {hops:?}, expected {want:?} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `connections` long-lived TCP connections and a UDP stream to the echo
/// VIP, from every client address in turn.
fn echo_load(fleet: &Fleet, connections: usize) -> Load {
    let echo: SocketAddr = "198.18.100.4:7".parse().unwrap();
    Load::start(&LoadSpec {
        ns: fleet.ns("client"),
        tcp: echo,
        connections,
        udp: Some(echo),
        sources: Fleet::clients(),
    })
}

/// Node `i`'s uplink address: the router's next hop to it.
fn next_hop(i: u32) -> String {
    format!("198.18.1.{i}")
}

/// The client ports of [`requests`], each used once.
static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(20000);

/// HTTP requests to the web VIP, from each client address in turn: the
/// answers, by pod.
fn requests(fleet: &Fleet, count: usize) -> std::collections::BTreeMap<String, usize> {
    let clients = Fleet::clients();
    let to: SocketAddr = format!("{WEB}:80").parse().unwrap();
    let mut answers = std::collections::BTreeMap::new();
    for i in 0..count {
        let from = clients[i % clients.len()];
        // A port of its own: a client port the kernel reuses would meet
        // the closing flow of the connection before it, not make a new one.
        let port = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let from = SocketAddr::new(from, port);
        let answer = http_get_from(&fleet.ns("client"), Some(from), to, Duration::from_secs(3))
            .unwrap_or_else(|e| format!("no answer: {e}"));
        *answers.entry(answer).or_default() += 1;
    }
    answers
}

/// Three nodes serve: the router has a multipath route over them; 300
/// requests from 50 client addresses are all answered, every node serves
/// its share and the pods theirs (each within 4 binomial standard
/// deviations); every node builds the same Maglev tables.
#[test]
fn every_node_serves_its_share_with_the_same_tables() {
    let _alone = rialto_testbed::alone();
    const REQUESTS: usize = 300;
    let fleet = Fleet::up(3);
    let nodes: Vec<Node> = (1..=3)
        .map(|i| Node::start(&fleet, i, &fleet.config(i), &[]))
        .collect();
    let took = await_next_hops(
        &fleet,
        WEB,
        &[&next_hop(1), &next_hop(2), &next_hop(3)],
        Duration::from_secs(15),
    );
    println!("three next hops after {took:?}");
    let answers = requests(&fleet, REQUESTS);
    let created: Vec<u64> = nodes.iter().map(Node::created).collect();
    let digests: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| n.get("/api/v1/services")[0]["maglev_digest"].clone())
        .collect();
    println!("answers {answers:?}; flows per node {created:?}; digests {digests:?}");
    let mut nodes = nodes;
    nodes.pop().unwrap().stop();
    forgeries(&fleet, &nodes[0]);
    for node in nodes {
        node.stop();
    }

    let within = |got: f64, n: f64, share: f64| {
        (got - n * share).abs() <= 4.0 * (n * share * (1.0 - share)).sqrt()
    };
    assert_eq!(answers.values().sum::<usize>(), REQUESTS, "{answers:?}");
    assert!(
        answers.keys().all(|a| a.contains(" in cluster ")),
        "{answers:?}"
    );
    assert_eq!(answers.len(), 4, "four pods: {answers:?}");
    for (pod, &n) in &answers {
        assert!(
            within(n as f64, REQUESTS as f64, 0.25),
            "{pod}: {n} of {REQUESTS}"
        );
    }
    assert_eq!(created.iter().sum::<u64>(), REQUESTS as u64, "{created:?}");
    for (i, &n) in created.iter().enumerate() {
        assert!(
            within(n as f64, REQUESTS as f64, 1.0 / 3.0),
            "node {}: {n} of {REQUESTS}: {created:?}",
            i + 1
        );
    }
    assert!(digests[0].is_string(), "{digests:?}");
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
}

/// What node 1 takes from node 3 (stopped: its sync address is free) that
/// nobody may send: a datagram from an address that is no peer's, one
/// from node 3's address signed with another key, one signed with the
/// fleet's key that speaks for a flow on node 1's own SNAT address, and
/// that one again (a replay). Each is dropped and counted under its
/// reason, and node 1's table takes none.
fn forgeries(fleet: &Fleet, node1: &Node) {
    use rialto_dataplane::pipeline::replica::Replica;
    let fleet_of = || node1.get("/api/v1/status")["fleet"].clone();
    let peer3 = |status: &serde_json::Value| {
        (status["peers"].as_array().unwrap().iter())
            .find(|p| p["node"] == 3)
            .cloned()
            .unwrap()
    };
    let flows = || {
        workers_total(
            &node1.get("/api/v1/status"),
            |w| &w["balance"]["flows"]["live"],
        )
    };
    // The counters are published every quarter of a second: node 3's last
    // datagrams, and the flows adopted before, are in them by then.
    std::thread::sleep(Duration::from_millis(600));
    let before = fleet_of();
    let live = flows();
    let to: SocketAddr = "198.18.1.1:7946".parse().unwrap();
    let key_hex =
        std::fs::read_to_string(format!("/tmp/rialto-testbed-{}/fleet.key", fleet.name)).unwrap();
    let key: Vec<u8> = (0..key_hex.trim().len() / 2)
        .map(|i| u8::from_str_radix(&key_hex.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let signed = |key: &[u8]| -> Vec<u8> {
        let key = rialto_sync::Key::new(key).unwrap();
        let record = size_of::<Replica>();
        let mut sender = rialto_sync::Sender::new(3, 7, key, record, 1400, 4).unwrap();
        // A flow on node 1's own SNAT address (198.18.200.17), port 10000.
        let mut replica = Replica::control(Replica::UP, 0);
        replica.remaining = 60;
        replica.flow.reverse.dst[10..12].copy_from_slice(&[0xff, 0xff]);
        replica.flow.reverse.dst[12..].copy_from_slice(&[198, 18, 200, 17]);
        replica.flow.reverse.dst_port = 10000;
        sender.push(bytemuck::bytes_of(&replica)).unwrap();
        let mut out = Vec::new();
        sender.flush(&mut out);
        out.remove(0)
    };
    let genuine = signed(&key);
    let send = |ns: &str, from: &str, datagram: &[u8]| {
        in_netns(&fleet.ns(ns), || {
            let socket = std::net::UdpSocket::bind(from).unwrap();
            socket.send_to(datagram, to).unwrap();
        });
    };
    send("client", "198.18.0.10:7946", &genuine);
    send("node3", "198.18.1.3:7946", &signed(&[0x5a; 32]));
    send("node3", "198.18.1.3:7946", &genuine);
    send("node3", "198.18.1.3:7946", &genuine);
    std::thread::sleep(Duration::from_millis(600));
    let after = fleet_of();
    println!("node 1's fleet after the forgeries: {after}");
    let count = |status: &serde_json::Value, reason: &str| {
        peer3(status)["rejected"][reason].as_u64().unwrap_or(0)
    };
    let not_peer = |status: &serde_json::Value| status["not_peer"].as_u64().unwrap();
    assert_eq!(not_peer(&after), not_peer(&before) + 1, "{after}");
    for reason in ["bad_mac", "not_theirs", "replayed"] {
        assert_eq!(
            count(&after, reason),
            count(&before, reason) + 1,
            "{reason}: {after}"
        );
    }
    assert_eq!(
        peer3(&after)["flows_adopted"],
        peer3(&before)["flows_adopted"],
        "{after}"
    );
    assert_eq!(flows(), live, "node 1's table took nothing");
}

/// The fleet's changes under load, with flow state shared: 30 long-lived
/// TCP connections (a round trip every 10 ms each, from 50 client
/// addresses) and a UDP stream run through three of four nodes while
/// - node 2's Rialto is killed (`kill -9`): its BGP speaker dies with it,
///   the router's route loses it within a second, and the others, which
///   hold its flows, carry its connections and take the replies to its
///   SNAT address (its VTEP's traffic comes to them);
/// - node 4 is added: it pulls every peer's flows before it is announced;
/// - node 2 is started again: it pulls them too, and is announced again.
///
/// No connection breaks and none stalls more than 2 s. Then a node whose
/// worker stops making progress is withdrawn, and so is one whose worker
/// panics; and a reload that removes a VIP withdraws it on that node only.
#[test]
fn the_fleet_loses_adds_and_restarts_nodes_and_no_connection_breaks() {
    let _alone = rialto_testbed::alone();
    let fleet = Fleet::up(4);
    echo_in_pods(|pod| fleet.ns(pod));
    let echo = ECHO_SERVICES;
    let start = |i: u32| Node::start(&fleet, i, &(fleet.config(i) + echo), &[]);
    let mut nodes: Vec<Node> = (1..=3).map(start).collect();
    let hops = |nodes: &[u32]| -> Vec<String> { nodes.iter().map(|&i| next_hop(i)).collect() };
    let await_hops = |nodes: &[u32], timeout: Duration| {
        let want = hops(nodes);
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        await_next_hops(&fleet, WEB, &want, timeout)
    };
    await_hops(&[1, 2, 3], Duration::from_secs(15));
    let load = echo_load(&fleet, 30);
    std::thread::sleep(Duration::from_secs(1));

    // kill -9 of node 2.
    let killed_at = load.elapsed();
    nodes.remove(1).rialto.kill();
    let gone = await_hops(&[1, 3], Duration::from_secs(1));
    println!("node 2 killed at {killed_at:?}: withdrawn after {gone:?}");
    std::thread::sleep(Duration::from_secs(2));

    // Node 4 joins: announced once it holds its peers' flows.
    let added_at = load.elapsed();
    let node4 = start(4);
    let synced = node4
        .rialto
        .wait_for_log("fleet: synced", Duration::from_secs(10));
    let joined = await_hops(&[1, 3, 4], Duration::from_secs(15));
    println!("node 4 added at {added_at:?}: {synced}; announced after {joined:?}");
    nodes.push(node4);
    std::thread::sleep(Duration::from_secs(2));

    // Node 2 again: its own flows from its state, its peers' from them.
    let restarted_at = load.elapsed();
    let path = std::env::temp_dir().join(format!("rialto-{}-node2.toml", fleet.name));
    std::fs::write(&path, fleet.config(2) + echo).unwrap();
    let node2 = Node::run(&fleet, 2, path, &[]);
    let back = await_hops(&[1, 2, 3, 4], Duration::from_secs(15));
    println!("node 2 restarted at {restarted_at:?}: announced after {back:?}");
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    println!("under load: {report}");
    let fleet_of = |node: &Node| node.get("/api/v1/status")["fleet"].clone();
    let adopted = |node: &Node| -> u64 {
        (fleet_of(node)["peers"].as_array().unwrap().iter())
            .map(|p| p["flows_adopted"].as_u64().unwrap())
            .sum()
    };
    for node in nodes.iter().chain([&node2]) {
        println!("{}'s fleet: {}", node.ns, fleet_of(node));
    }
    assert!(report.broken().is_empty(), "{report}");
    assert!(report.stalled(STALL).is_empty(), "{report}");
    assert!(adopted(&node2) > 0, "node 2 pulled its peers' flows");
    assert!(adopted(&nodes[2]) > 0, "node 4 pulled its peers' flows");
    // Node 1 took the others' new connections as they came.
    let delay = &fleet_of(&nodes[0])["replication_delay"];
    println!("node 1's replication delay: {delay}");
    assert!(delay["flows"].as_u64().unwrap() > 0, "{delay}");
    assert!(delay["p50_ms"].as_f64().unwrap() > 0.0, "{delay}");
    let metrics = rialto_testbed::api_text(&nodes[0].ns, "/metrics");
    for line in [
        "rialto_fleet_peer_received_total{peer=\"4\",what=\"adopted\"}",
        "rialto_fleet_peer_state{peer=\"2\",state=\"in_sync\"} 1",
        "rialto_fleet_replication_delay_seconds_bucket{le=\"+Inf\"}",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    nodes.insert(1, node2);
    nodes.pop().unwrap().stop();

    // Node 3 with `fault` injected is withdrawn for `why`, and stays out.
    let faulty = |fault: &str, why: &str| {
        let path = std::env::temp_dir().join(format!("rialto-{}-node3.toml", fleet.name));
        std::fs::write(&path, fleet.config(3) + echo).unwrap();
        let node = Node::run(&fleet, 3, path, &["--inject-fault", fault]);
        let line = node
            .rialto
            .wait_for_log("withdrawn", Duration::from_secs(20));
        assert!(line.contains(why), "{fault}: {line}");
        await_hops(&[1, 2], Duration::from_secs(1));
        assert_eq!(node.get("/api/v1/status")["announce"]["why"], why);
        node
    };
    nodes.pop().unwrap().rialto.kill();
    await_hops(&[1, 2], Duration::from_secs(1));
    // Node 3's worker of queue 0 stops at its first frame.
    faulty("worker-stall:0", "workers stalled").stop();
    // It panics at its first frame: its queue goes to the kernel, which
    // does not serve the VIPs, so the node is withdrawn too.
    faulty("worker-panic:0", "workers down").stop_failed();

    // A reload on node 1 without the iperf services: its route to that VIP
    // loses node 1, the other VIPs keep it.
    let node1 = &nodes[0];
    let without = std::fs::read_to_string(&node1.config)
        .unwrap()
        .split("\n[[service]]\nname = \"iperf")
        .next()
        .unwrap()
        .to_owned()
        + echo;
    assert!(!without.contains("name = \"iperf"), "{without}");
    std::fs::write(&node1.config, without).unwrap();
    node1.rialto.signal(nix::sys::signal::Signal::SIGHUP);
    node1
        .rialto
        .wait_for_log("config reloaded", Duration::from_secs(5));
    await_next_hops(&fleet, IPERF, &[&next_hop(2)], Duration::from_secs(2));
    await_hops(&[1, 2], Duration::from_secs(1));
    for node in nodes {
        node.stop();
    }
}

/// `rialto drain` under load: the node is withdrawn, takes no new
/// connection, serves what still reaches it, and stops once the router has
/// taken it out (its peers hold its flows and carry its connections): of
/// 20 long-lived TCP connections and a UDP stream, none breaks and none
/// stalls more than half a second.
#[test]
fn a_drained_node_takes_no_new_connection_and_breaks_none() {
    let _alone = rialto_testbed::alone();
    let fleet = Fleet::up(2);
    let nodes = echo_nodes(&fleet, &["--drain-seconds", "5"]);
    let before = requests(&fleet, 20);
    assert!(nodes[0].created() > 0, "node 1 served before: {before:?}");
    let load = echo_load(&fleet, 20);
    std::thread::sleep(Duration::from_secs(1));

    let drain = rialto_testbed::netns_command(&nodes[0].ns, BIN)
        .arg("drain")
        .output()
        .unwrap();
    assert!(drain.status.success(), "{drain:?}");
    await_next_hops(&fleet, WEB, &[&next_hop(2)], Duration::from_secs(1));
    let created = nodes[0].created();
    let after = requests(&fleet, 40);
    assert_eq!(after.values().sum::<usize>(), 40, "{after:?}");
    assert!(
        after.keys().all(|a| a.contains(" in cluster ")),
        "{after:?}"
    );
    assert_eq!(
        nodes[0].created(),
        created,
        "no new flow on the drained node"
    );
    assert_eq!(
        nodes[0].get("/api/v1/status")["announce"]["why"],
        "draining"
    );
    let mut nodes = nodes.into_iter();
    nodes.next().unwrap().wait_exit();
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    println!("node 1 drained under load: {report}");
    assert!(report.broken().is_empty(), "{report}");
    assert!(
        report.stalled(Duration::from_millis(500)).is_empty(),
        "{report}"
    );
    for node in nodes {
        node.stop();
    }
}

/// An upgrade of a node of a fleet (`--take-over`) under load: the new
/// process takes the old one's flows and its place in the fleet (the sync
/// socket on the same port included), and no connection breaks.
#[test]
fn an_upgrade_of_a_fleet_node_breaks_no_connection() {
    let _alone = rialto_testbed::alone();
    let fleet = Fleet::up(2);
    let mut nodes = echo_nodes(&fleet, &[]);
    // A reload that changes `[fleet]` (here the port it listens on) is
    // refused: the syncer takes it at the next start.
    let moved = (fleet.config(2) + ECHO_SERVICES).replace(":7946\"\nkey_file", ":7947\"\nkey_file");
    assert!(moved.contains(":7947"), "{moved}");
    let refused = rialto_testbed::in_netns(&nodes[1].ns, || {
        rialto_testbed::http()
            .post("http://127.0.0.1:9600/api/v1/reload")
            .header("Content-Type", "application/toml")
            .send(&moved)
    });
    assert!(
        matches!(refused, Err(ureq::Error::StatusCode(422))),
        "{refused:?}"
    );
    let last = &nodes[1].get("/api/v1/status")["reloads"]["last"];
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("[fleet] differs"),
        "{last}"
    );
    let load = echo_load(&fleet, 20);
    std::thread::sleep(Duration::from_secs(1));

    let old = nodes.remove(0);
    let new = Node::run(&fleet, 1, old.config.clone(), &["--take-over"]);
    let (status, summary) = old.rialto.wait_exit();
    assert!(status.success(), "the old process: {summary}");
    // It hears from node 2 on the port the old process let go of.
    let asked = Instant::now();
    loop {
        let fleet_status = new.get("/api/v1/status")["fleet"].clone();
        if fleet_status["peers"][0]["state"] == "in_sync" {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "the new process in sync with node 2 within 5 s: {fleet_status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Announced again once its own BGP speaker has a session (as at
    // start: within 15 s).
    let back = await_next_hops(
        &fleet,
        WEB,
        &[&next_hop(1), &next_hop(2)],
        Duration::from_secs(15),
    );
    println!("node 1 announced again {back:?} after the take-over");
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    println!("node 1 upgraded under load: {report}");
    assert!(report.broken().is_empty(), "{report}");
    assert!(report.stalled(STALL).is_empty(), "{report}");
    new.stop();
    for node in nodes {
        node.stop();
    }
}
