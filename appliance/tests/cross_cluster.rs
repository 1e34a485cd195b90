//! The mission end to end on the cross-cluster testbed (`testbed/topology.sh`):
//! a client behind a router, Rialto on the border node, and two clusters
//! behind the kernel's own VXLAN devices whose pods use the same addresses.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use rialto_testbed::{
    ECHO_SERVICES, Load, LoadSpec, Rialto, Topology, Within, echo_in_pods, ip, netns_command,
    workers_total,
};

const BIN: &str = env!("CARGO_BIN_EXE_rialto");
const REQUESTS: usize = 400;

/// Rialto on the testbed's border node, with its config file.
struct Border {
    rialto: Rialto,
    config: TempFile,
}

/// A file removed when dropped, also when the test fails.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Border {
    fn start(topology: &Topology, config: &str) -> Self {
        let path = std::env::temp_dir().join(format!("rialto-{}.toml", topology.name));
        std::fs::write(&path, config).unwrap();
        Self {
            rialto: launch(topology, &path, &[]),
            config: TempFile(path),
        }
    }

    /// Rewrites the config and reloads it with SIGHUP.
    fn reload(&self, config: &str) {
        std::fs::write(&self.config.0, config).unwrap();
        self.rialto.signal(nix::sys::signal::Signal::SIGHUP);
        self.rialto
            .wait_for_log("config reloaded", Duration::from_secs(5));
    }

    /// A planned upgrade: a new Rialto takes over (`--take-over`, the same
    /// arguments) and the old one exits, its UMEM ledger balanced.
    fn take_over(self, topology: &Topology) -> Self {
        let new = launch(topology, &self.config.0, &["--take-over"]);
        let (status, summary) = self.rialto.wait_exit();
        assert!(status.success(), "the old rialto: {summary}");
        for w in summary["workers"].as_array().unwrap() {
            assert_eq!(w["umem_balanced"], true, "the old rialto's frames: {w}");
        }
        Self {
            rialto: new,
            config: self.config,
        }
    }

    /// A crash (`kill -9`), and a new Rialto with the same arguments.
    fn crash_and_restart(self, topology: &Topology) -> Self {
        self.rialto.kill();
        Self {
            rialto: launch(topology, &self.config.0, &[]),
            config: self.config,
        }
    }

    /// Stops Rialto; its exit summary.
    fn stop(self) -> serde_json::Value {
        let (status, summary) = self.rialto.terminate();
        assert!(status.success(), "{summary}");
        summary
    }
}

/// Rialto in the border namespace on `up0` with the config at `path`.
fn launch(topology: &Topology, path: &std::path::Path, extra: &[&str]) -> Rialto {
    let args = ["--iface", "up0", "--config", path.to_str().unwrap()];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    Rialto::start(BIN, &topology.ns("border"), &args)
}

/// Every pod answers HTTP with "pN in cluster C (ADDR)".
fn requests(topology: &Topology, count: usize) -> BTreeMap<String, usize> {
    let urls = vec!["http://198.18.100.1/"; count];
    let out = netns_command(&topology.ns("client"), "curl")
        .args(["-s", "--max-time", "5"])
        .args(&urls)
        .output_by(Duration::from_secs(120));
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
    let border = Border::start(&topology, &config);
    let answers = requests(&topology, REQUESTS);
    let summary = border.stop();

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
    let created = workers_total(&summary, |w| &w["balance"]["flows"]["created"]);
    assert_eq!(
        created, REQUESTS as u64,
        "one flow per connection: {summary}"
    );
    // No ARP crosses the tunnel: the gateway knows Rialto by a static entry.
    assert!(
        ip(&topology.ns("east"), "neigh show dev vx100").contains("PERMANENT"),
        "the gateway reaches Rialto through its static neighbour entry"
    );
}

/// A UDP service whose one backend is east's pod 1, port 9999.
const UDP_SERVICE: &str = r#"
[[service]]
name = "probe"
vip = "198.18.100.3:9999/UDP"
backends = [{ cluster = "east", addr = "198.19.0.10:9999" }]
"#;

/// VXLAN toward Rialto carrying, from a pod of the cluster, a UDP datagram
/// `payload` to the probe VIP, sent from `ns` (bound to `src`) with `vni`,
/// `count` times. Were Rialto to take it, it would reach east's pod 1.
fn send_vxlan(ns: &str, src: &str, vni: u32, count: usize, payload: &[u8]) {
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 3, 3])
        .ipv4([198, 19, 0, 99], [198, 18, 100, 3], 64)
        .udp(4000, 9999)
        .write(&mut inner, payload)
        .unwrap();
    let mut datagram = vec![0x08, 0, 0, 0];
    datagram.extend_from_slice(&vni.to_be_bytes()[1..]);
    datagram.push(0);
    datagram.extend_from_slice(&inner);
    rialto_testbed::in_netns(ns, || {
        let socket = std::net::UdpSocket::bind((src, 0)).unwrap();
        for _ in 0..count {
            socket.send_to(&datagram, "198.18.1.1:4789").unwrap();
        }
    });
}

#[test]
fn vxlan_from_an_unknown_source_or_with_the_wrong_vni_reaches_no_pod() {
    let topology = Topology::up(1);
    let border = Border::start(&topology, &(topology.config() + UDP_SERVICE));
    let listener = rialto_testbed::in_netns(&topology.ns("east-p1"), || {
        let socket = std::net::UdpSocket::bind("198.19.0.10:9999").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        socket
    });
    const SENT: usize = 10;
    // The router knows the border node's MAC without asking, so none of
    // its datagrams waits for ARP.
    let border_mac = ip(&topology.ns("border"), "-br link show dev up0");
    let border_mac = border_mac.split_whitespace().nth(2).unwrap();
    ip(
        &topology.ns("router"),
        &format!("neigh replace 198.18.1.1 lladdr {border_mac} dev br0 nud permanent"),
    );
    // From east's gateway with east's VNI, the datagram reaches the pod
    // (tried until it does: the first one may wait for east's ARP), so the
    // path is resolved, and the check below could see one that should not.
    let mut buf = [0u8; 64];
    let reached = (0..10).any(|_| {
        send_vxlan(&topology.ns("east"), "198.18.2.1", 100, 1, b"may arrive");
        matches!(listener.recv(&mut buf), Ok(n) if &buf[..n] == b"may arrive")
    });
    assert!(
        reached,
        "the right VNI from east's gateway reaches the pod; east's routes: {}\nneighbours: {}",
        ip(&topology.ns("east"), "route"),
        ip(&topology.ns("east"), "neigh"),
    );
    while listener.recv(&mut buf).is_ok() {}
    // East's gateway with west's VNI; the router, which is no gateway.
    send_vxlan(
        &topology.ns("east"),
        "198.18.2.1",
        200,
        SENT,
        b"must not arrive",
    );
    send_vxlan(
        &topology.ns("router"),
        "198.18.2.254",
        100,
        SENT,
        b"must not arrive",
    );
    assert!(
        listener.recv(&mut buf).is_err(),
        "nothing more reaches the pod"
    );
    let summary = border.stop();
    let worker = &summary["workers"][0];
    assert_eq!(worker["drops"]["unknown_vni"], SENT, "{summary}");
    // VXLAN from a source that is no gateway is not Rialto's: the XDP
    // program passes it to the node's kernel, which has no VXLAN socket.
    // (The gateways' own VXLAN, IPv6 neighbour discovery say, is steered too.)
    let steered = summary["xdp"]["redirect_vxlan"]["packets"]
        .as_u64()
        .unwrap();
    assert!(steered >= SENT as u64, "{summary}");
    assert!(
        summary["xdp"]["pass_not_owned"]["packets"]
            .as_u64()
            .unwrap()
            >= SENT as u64
    );
    assert_eq!(worker["drops"]["unknown_peer"], 0, "{summary}");
}

/// The bytes the receiving end (the server) got in each one-second
/// interval of an iperf3 run, from the server's own report (text:
/// `[  5]   2.00-3.00   sec  6.00 MBytes  50.3 Mbits/sec`): socket buffers
/// keep the sender's figures above zero through a stall, the receiver's
/// show it.
fn received_intervals(report: &serde_json::Value) -> Vec<u64> {
    let text = report["server_output_text"]
        .as_str()
        .unwrap_or_else(|| panic!("no server output in {report}"));
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let at = cells.iter().position(|&c| c == "sec")?;
            let (from, to) = cells.get(at.checked_sub(1)?)?.split_once('-')?;
            let span = to.parse::<f64>().ok()? - from.parse::<f64>().ok()?;
            let amount: f64 = cells.get(at + 1)?.parse().ok()?;
            let unit = match *cells.get(at + 2)? {
                "Bytes" => 1.0,
                "KBytes" => 1024.0,
                "MBytes" => 1024.0 * 1024.0,
                "GBytes" => 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            };
            // The one-second intervals, not the closing total.
            (span < 1.5).then_some((amount * unit) as u64)
        })
        .collect()
}

#[test]
fn a_long_transfer_survives_reloads_and_the_draining_of_its_backend() {
    let topology = Topology::up(2);
    let config = topology.config();
    let border = Border::start(&topology, &config);
    let started = std::time::Instant::now();
    let client = netns_command(&topology.ns("client"), "iperf3")
        // At a set rate: flat out it would fill the per-CPU backlog every
        // namespace shares, and other tests running beside it lose packets.
        .args(["-c", "198.18.100.2", "-t", "6", "-b", "50M", "-J"])
        .arg("--get-server-output")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reloaded = Vec::new();
    let mut reload = |text: &str| {
        std::thread::sleep(Duration::from_secs(2));
        border.reload(text);
        reloaded.push(started.elapsed());
    };
    // Another service loses a backend; then the transfer's own backend drains.
    let removed = config.replace(
        "    { cluster = \"east\", addr = \"198.19.0.11:80\" },\n",
        "",
    );
    assert_ne!(removed, config);
    reload(&removed);
    let draining = removed.replace(
        r#"{ cluster = "west", addr = "198.19.0.10:5201" }"#,
        r#"{ cluster = "west", addr = "198.19.0.10:5201", state = "draining" }"#,
    );
    assert_ne!(draining, removed);
    reload(&draining);
    let out = rialto_testbed::wait_within(client, Duration::from_secs(60))
        .unwrap_or_else(|(what, _)| panic!("iperf3 {what}"));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "iperf3 failed: {report}");
    // Both reloads fell inside the 6 s of the transfer, which kept moving:
    // the server received data in every one-second interval.
    assert!(
        reloaded.iter().all(|t| *t < Duration::from_millis(5500)),
        "the reloads came during the transfer: {reloaded:?}"
    );
    let moved = received_intervals(&report);
    assert!(moved.len() >= 6, "{moved:?}");
    assert!(
        moved.iter().take(6).all(|&b| b > 0),
        "no interval stalled at the receiver: {moved:?}"
    );
    let summary = border.stop();
    let removed_flows = workers_total(&summary, |w| &w["balance"]["flows"]["reload_removed"]);
    assert_eq!(
        removed_flows, 0,
        "iperf3's two connections were kept: {summary}"
    );
    let no_flow = workers_total(&summary, |w| &w["drops"]["no_flow"]);
    assert_eq!(
        no_flow, 0,
        "no packet of the transfer found its flow gone: {summary}"
    );
}

#[test]
fn the_next_hops_mac_is_learned_and_followed() {
    let topology = Topology::up(1);
    let config = topology.config();
    assert!(
        !config.lines().any(|l| l.starts_with("next_hop_mac")),
        "learned, not configured"
    );
    let border = Border::start(&topology, &config);
    assert_eq!(requests(&topology, 8).values().sum::<usize>(), 8);

    // The router gets a new MAC; the node's kernel learns it by ARP.
    let ip = |ns: &str, args: &str| ip(&topology.ns(ns), args);
    // (Every host on the link forgets the old MAC, as a gratuitous ARP would
    // make them; Rialto learns the new one from the node's kernel.)
    ip("router", "link set br0 address 02:00:00:00:00:99");
    for ns in ["client", "east", "west"] {
        ip(ns, "neigh flush all");
    }
    ip("border", "neigh flush dev up0");
    let pinged = netns_command(&topology.ns("border"), "ping")
        .args(["-c", "1", "-W", "2", "198.18.1.254"])
        .output_by(Duration::from_secs(10));
    assert!(
        pinged.status.success(),
        "the router answers the node's kernel"
    );
    let line = border
        .rialto
        .wait_for_log("next hop's MAC changed", Duration::from_secs(5));
    assert!(line.contains("02:00:00:00:00:99"), "{line}");
    assert_eq!(
        requests(&topology, 8).values().sum::<usize>(),
        8,
        "answered through the router's new MAC"
    );
    border.stop();
}

/// The node's default route moves to another router (a second address of
/// the top of rack, with a MAC of its own): Rialto follows the route, takes
/// the new gateway's MAC from the neighbour table, and its frames go there.
#[test]
fn the_next_hop_follows_the_default_route_to_another_gateway() {
    const OTHER_MAC: &str = "02:00:00:00:00:98";
    let topology = Topology::up(1);
    let border = Border::start(&topology, &topology.config());
    assert_eq!(requests(&topology, 8).values().sum::<usize>(), 8);

    let ip = |ns: &str, args: &str| ip(&topology.ns(ns), args);
    // The second gateway: a MAC VLAN on the router's bridge.
    ip(
        "router",
        &format!("link add rt2 link br0 address {OTHER_MAC} type macvlan mode bridge"),
    );
    ip("router", "addr add 198.18.1.253/24 dev rt2");
    ip("router", "link set rt2 up");
    // Its MAC known to the node (a static entry: the router's two
    // interfaces would both answer ARP for it).
    ip(
        "border",
        &format!("neigh replace 198.18.1.253 lladdr {OTHER_MAC} dev up0 nud permanent"),
    );
    let received = || -> u64 {
        let stats = ip("router", "-j -s link show dev rt2");
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        stats[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
    };
    let before = received();
    ip("border", "route replace default via 198.18.1.253");
    let line = border
        .rialto
        .wait_for_log("next hop's MAC changed", Duration::from_secs(5));
    assert!(
        line.contains(OTHER_MAC) && line.contains("198.18.1.253"),
        "{line}"
    );
    assert_eq!(
        requests(&topology, 8).values().sum::<usize>(),
        8,
        "answered through the other gateway"
    );
    // Each request's frames to the pod and back to the client.
    let through = received() - before;
    assert!(
        through >= 8 * 4,
        "{through} frames through the other gateway"
    );
    border.stop();
}

#[test]
fn when_a_gateway_goes_down_the_config_sends_new_connections_to_the_other_cluster() {
    let topology = Topology::up(2);
    let config = topology.config();
    let border = Border::start(&topology, &config);
    let clusters = |answers: &BTreeMap<String, usize>| -> Vec<String> {
        let seen: std::collections::BTreeSet<String> = answers
            .keys()
            .filter_map(|a| a.split_whitespace().nth(3).map(str::to_owned))
            .collect();
        seen.into_iter().collect()
    };
    assert_eq!(clusters(&requests(&topology, 40)), ["east", "west"]);

    // East's gateway goes down; the config marks east's backends draining.
    ip(&topology.ns("east"), "link set eth0 down");
    let marked = config
        .replace(
            r#"{ cluster = "east", addr = "198.19.0.10:80" }"#,
            r#"{ cluster = "east", addr = "198.19.0.10:80", state = "draining" }"#,
        )
        .replace(
            r#"{ cluster = "east", addr = "198.19.0.11:80" }"#,
            r#"{ cluster = "east", addr = "198.19.0.11:80", state = "draining" }"#,
        );
    border.reload(&marked);
    let answers = requests(&topology, 40);
    assert_eq!(
        answers.values().sum::<usize>(),
        40,
        "all answered: {answers:?}"
    );
    assert_eq!(clusters(&answers), ["west"], "{answers:?}");
    border.stop();
}

/// A planned upgrade (`--take-over`) and a crash (`kill -9`, then a
/// restart) under load: 20 TCP connections each echoing every 10 ms, a
/// UDP stream of a datagram a millisecond, and an iperf3 transfer, all
/// through the VIPs. No connection breaks or stalls for more than 1 s,
/// iperf3 finishes cleanly; the stream's gaps at each event are printed
/// (they are the README's figures, not asserted: no test times anything).
#[test]
fn an_upgrade_and_a_crash_break_no_connection() {
    const STALL_BOUND: Duration = Duration::from_secs(1);
    let topology = Topology::up(2);
    echo_in_pods(|pod| topology.ns(pod));
    let border = Border::start(&topology, &(topology.config() + ECHO_SERVICES));
    let load = Load::start(&LoadSpec {
        ns: topology.ns("client"),
        tcp: "198.18.100.4:7".parse().unwrap(),
        connections: 20,
        udp: Some("198.18.100.4:7".parse().unwrap()),
        sources: Vec::new(),
    });
    let iperf = netns_command(&topology.ns("client"), "iperf3")
        .args(["-c", "198.18.100.2", "-t", "8", "-b", "20M", "-J"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let upgraded_at = load.elapsed();
    let border = border.take_over(&topology);
    let line = border
        .rialto
        .wait_for_log("took over", Duration::from_secs(5));
    println!("take-over: {line}");
    std::thread::sleep(Duration::from_secs(2));
    let crashed_at = load.elapsed();
    let border = border.crash_and_restart(&topology);
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    let out = rialto_testbed::wait_within(iperf, Duration::from_secs(60))
        .unwrap_or_else(|(what, _)| panic!("iperf3 {what}"));
    let summary = border.stop();
    println!("{report}");
    println!("after the restart: {}", summary["resumed"]);
    let stream = report.stream.as_ref().unwrap();
    for (event, at) in [
        ("take-over", upgraded_at),
        ("crash and restart", crashed_at),
    ] {
        let gap = (stream.gaps.iter())
            .filter(|(from, _)| *from + Duration::from_millis(100) >= at)
            .filter(|(from, _)| *from < at + Duration::from_secs(2))
            .map(|g| g.1)
            .max()
            .unwrap_or_default();
        println!("UDP gap at the {event}: {gap:?}");
    }
    assert!(report.broken().is_empty(), "{report}\n{summary}");
    assert!(
        report.stalled(STALL_BOUND).is_empty(),
        "{report}\n{summary}"
    );
    assert!(stream.answered > 0, "{report}");
    let iperf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "iperf3 failed: {iperf}");
    assert_eq!(
        summary["resumed"]["recovered"].as_u64(),
        Some(20 + 2 + 1),
        "the restart resumed the 20 connections, iperf3's two and the stream: {summary}"
    );
}
