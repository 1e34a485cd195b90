//! End to end: the real `rialto` binary on one end of a veth pair, real
//! sockets, ping and ARP from the peer namespace.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use nix::sys::signal::Signal;
use rialto_testbed::{
    NODE_V4, NODE_V6, Pair, Rialto, VIP_V4, VIP_V6, Within, in_netns, ip, netns_command, pings,
};

const BIN: &str = env!("CARGO_BIN_EXE_rialto");
const VIPS: [&str; 4] = [
    "--vip",
    "198.18.100.1:7/UDP",
    "--vip",
    "[fd00:100::1]:7/UDP",
];

/// Starts `rialto run --mode reflect` on the pair's node end.
fn start(pair: &Pair, args: &[&str]) -> Rialto {
    let mode = ["--mode", "reflect", "--iface", &pair.node_if];
    Rialto::start(BIN, &pair.node_ns, &[&mode[..], args].concat())
}

/// Sends `count` numbered datagrams on each of `flows` sockets (so RSS
/// spreads them over queues) and checks every reply: from `to`, to the
/// sender's own port, payload intact.
fn reflect_round_trip(to: SocketAddr, flows: usize, count: usize) {
    let any: SocketAddr = match to.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    for flow in 0..flows {
        let socket = UdpSocket::bind(any).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut buf = [0u8; 1500];
        for seq in 0..count {
            let payload = format!("flow {flow} datagram {seq} {}", "x".repeat(seq % 300));
            socket.send_to(payload.as_bytes(), to).unwrap();
            let (n, from) = socket.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!("no reflection of flow {flow} datagram {seq} to {to}: {e}")
            });
            assert_eq!(from, to, "the reply comes from the VIP");
            assert_eq!(&buf[..n], payload.as_bytes(), "payload intact");
        }
    }
}

/// Whether the kernel of the node answers a datagram to its own address and
/// a closed port with ICMP port unreachable (seen as ECONNREFUSED).
fn kernel_refuses_udp(node: IpAddr) -> bool {
    let any: SocketAddr = match node {
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    let socket = UdpSocket::bind(any).unwrap();
    socket.connect((node, 7)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    socket.send(b"to the kernel").unwrap();
    matches!(socket.recv(&mut [0; 64]), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
}

/// The kernel handles everything Rialto does not own: ARP/ND (the neighbour
/// cache is flushed first), ICMP echo, UDP to the node itself.
fn assert_kernel_answers(pair: &Pair) {
    ip(&pair.peer_ns, &format!("neigh flush dev {}", pair.peer_if));
    assert!(
        pings(&pair.peer_ns, NODE_V4.into()),
        "ARP and ping over IPv4"
    );
    assert!(
        pings(&pair.peer_ns, NODE_V6.into()),
        "ND and ping over IPv6"
    );
    in_netns(&pair.peer_ns, || {
        assert!(kernel_refuses_udp(NODE_V4.into()), "UDP to the node, IPv4");
        assert!(kernel_refuses_udp(NODE_V6.into()), "UDP to the node, IPv6");
    });
}

fn xdp_attached(pair: &Pair) -> bool {
    let out = Command::new("ip")
        .args([
            "-n",
            &pair.node_ns,
            "-d",
            "link",
            "show",
            "dev",
            &pair.node_if,
        ])
        .output_by(Duration::from_secs(10));
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
fn reflects_owned_traffic_and_leaves_the_rest_to_the_kernel() {
    let pair = Pair::up(2);
    assert_kernel_answers(&pair);
    let rialto = start(&pair, &VIPS);
    assert!(xdp_attached(&pair));

    const FLOWS: usize = 8;
    const COUNT: usize = 50;
    in_netns(&pair.peer_ns, || {
        reflect_round_trip(SocketAddr::new(VIP_V4.into(), 7), FLOWS, COUNT);
        reflect_round_trip(SocketAddr::new(VIP_V6.into(), 7), FLOWS, COUNT);
    });
    assert_kernel_answers(&pair);

    let (status, summary) = rialto.terminate();
    assert!(status.success(), "rialto exits cleanly: {status}");
    let sent = (2 * FLOWS * COUNT) as u64;
    assert_eq!(summary["xdp"]["redirect_vip"]["packets"], sent, "{summary}");
    assert_eq!(summary["xdp"]["pass_no_socket"]["packets"], 0, "{summary}");
    let workers = summary["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "one worker per queue");
    let tx: u64 = workers
        .iter()
        .map(|w| w["tx_packets"].as_u64().unwrap())
        .sum();
    assert_eq!(tx, sent, "{summary}");
    for w in workers {
        assert_eq!(w["umem_balanced"], true, "{w}");
        assert_eq!(w["umem"]["kernel_tx"], 0, "{w}");
    }

    assert!(!xdp_attached(&pair), "the interface is left as it was");
    assert_kernel_answers(&pair);
}

#[test]
fn fails_open_when_killed() {
    let pair = Pair::up(1);
    let rialto = start(&pair, &VIPS);
    in_netns(&pair.peer_ns, || {
        reflect_round_trip(SocketAddr::new(VIP_V4.into(), 7), 1, 10);
    });
    rialto.signal(Signal::SIGKILL);
    drop(rialto);
    assert!(!xdp_attached(&pair), "the program goes with its process");
    assert_kernel_answers(&pair);
}

/// Runs `rialto run` expecting a start-up failure; returns its one-line error.
fn startup_error(pair: &Pair, wrapper: &[&str], args: &[&str]) -> String {
    let mut cmd = netns_command(&pair.node_ns, wrapper.first().copied().unwrap_or(BIN));
    if !wrapper.is_empty() {
        cmd.args(&wrapper[1..]).arg(BIN);
    }
    // Should it not fail, it would serve until killed: 30 s is plenty.
    cmd.arg("run")
        .args(args)
        .arg("--state-dir")
        .arg(rialto_testbed::state_dir(&pair.node_ns));
    let out = rialto_testbed::output_within(&mut cmd, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("rialto {args:?} should fail at once: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "rialto {args:?} should fail: {stderr}"
    );
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line of error, not:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn startup_errors_are_one_clear_line() {
    let pair = Pair::up(2);
    let iface = pair.node_if.as_str();

    let e = startup_error(&pair, &[], &["--iface", "nosuch0"]);
    assert_eq!(e, "rialto: error: no such interface: nosuch0");

    let e = startup_error(&pair, &[], &["--iface", iface]);
    assert_eq!(
        e,
        "rialto: error: --mode balance needs --config FILE (or use --mode reflect)"
    );

    let e = startup_error(&pair, &[], &["--iface", iface, "--queues", "0,5"]);
    assert_eq!(
        e,
        format!("rialto: error: queue 5 is beyond {iface}'s 2 receive queue(s) (0..=1)")
    );

    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let e = startup_error(&pair, &nobody, &["--mode", "reflect", "--iface", iface]);
    assert!(e.contains("permission denied"), "{e}");

    // A SNAT address that is the node's own: the node would drop off its
    // own network, so Rialto refuses to start.
    let config = std::env::temp_dir().join(format!("rialto-own-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        r#"
[node]
vteps = ["198.18.0.1"]
next_hop_mac = "02:00:00:00:00:02"
[snat]
addresses = ["fd00::1"]
[[cluster]]
name = "east"
vni = 100
gateways = ["198.18.0.2"]
gateway_mac = "02:00:00:00:02:01"
[[service]]
name = "web6"
vip = "[fd00:100::1]:80/TCP"
backends = [{ cluster = "east", addr = "[fd00:119::10]:8080" }]
"#,
    )
    .unwrap();
    let e = startup_error(
        &pair,
        &[],
        &["--iface", iface, "--config", config.to_str().unwrap()],
    );
    std::fs::remove_file(&config).unwrap();
    assert!(
        e.starts_with("rialto: error: SNAT address fd00::1 is an address of this host ("),
        "{e}"
    );
    assert!(!xdp_attached(&pair), "nothing was attached");
    // The same from the command line's flags.
    let vip = "[fd00::1]:22/TCP";
    let e = startup_error(
        &pair,
        &[],
        &["--mode", "reflect", "--iface", iface, "--vip", vip],
    );
    assert!(
        e.starts_with(&format!(
            "rialto: error: --vip: VIP {vip} is on an address of this host ("
        )),
        "{e}"
    );
    assert!(!xdp_attached(&pair), "nothing was attached");

    let first = start(&pair, &[]);
    let e = startup_error(&pair, &[], &["--mode", "reflect", "--iface", iface]);
    assert!(
        e.contains(&format!("an XDP program is already attached to {iface}")),
        "{e}"
    );
    let (status, _) = first.terminate();
    assert!(status.success());
}

/// The API's `/metrics` of the rialto in namespace `ns`, parsed.
fn scrape(ns: &str) -> prometheus_parse::Scrape {
    let text = in_netns(ns, || {
        rialto_testbed::http()
            .get("http://127.0.0.1:9600/metrics")
            .call()
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
            .body_mut()
            .read_to_string()
            .unwrap()
    });
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"))
}

/// The value of `metric` labelled `queue="Q"`.
fn per_queue(scrape: &prometheus_parse::Scrape, metric: &str, queue: u32) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get("queue") == Some(&queue.to_string()))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v) => v,
            _ => panic!("{metric} is neither gauge nor counter"),
        })
        .unwrap_or_else(|| panic!("no {metric} for queue {queue}"))
}

/// One datagram on each of `flows` sockets to the VIP; how many came back.
fn answered(flows: usize) -> usize {
    (0..flows)
        .filter(|flow| {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let payload = format!("flow {flow}");
            socket.send_to(payload.as_bytes(), (VIP_V4, 7)).unwrap();
            matches!(socket.recv(&mut [0; 64]), Ok(n) if n == payload.len())
        })
        .count()
}

/// A worker that panics (fault injected on queue 1) neither stops the other
/// nor hangs shutdown: its queue fails open to the kernel, the metrics and
/// the summary say it is down, and every UMEM frame is still accounted for.
#[test]
fn a_worker_that_panics_fails_its_queue_open_and_the_other_serves_on() {
    let pair = Pair::up(2);
    let rialto = start(
        &pair,
        &[&VIPS[..2], &["--inject-fault", "worker-panic:1"]].concat(),
    );
    // Flows spread over both queues; the first frame on queue 1 kills its worker.
    const FLOWS: usize = 32;
    in_netns(&pair.peer_ns, || answered(FLOWS));
    rialto.wait_for_log("worker panicked", Duration::from_secs(5));
    rialto.wait_for_log(
        "worker down: its queue now goes to the kernel",
        Duration::from_secs(5),
    );
    let (before, metrics) = (in_netns(&pair.node_ns, status_xdp), scrape(&pair.node_ns));
    assert_eq!(per_queue(&metrics, "rialto_worker_up", 0), 1.0);
    assert_eq!(per_queue(&metrics, "rialto_worker_up", 1), 0.0);
    let back = in_netns(&pair.peer_ns, || answered(FLOWS));
    let after = in_netns(&pair.node_ns, status_xdp);
    let steered = after["redirect_vip"] - before["redirect_vip"];
    let passed = after["pass_no_socket"] - before["pass_no_socket"];
    assert_eq!(steered + passed, FLOWS as u64, "{before:?} {after:?}");
    assert!(passed > 0, "queue 1's frames go to the kernel: {after:?}");
    assert_eq!(back as u64, steered, "queue 0 answers every flow it gets");
    assert!(back > 0, "queue 0 still serves");
    assert_kernel_answers(&pair);

    let (status, summary) = rialto.terminate();
    assert_eq!(status.code(), Some(1), "a worker died: {summary}");
    let workers = summary["workers"].as_array().unwrap();
    assert_eq!(
        (workers[0]["up"].clone(), workers[1]["up"].clone()),
        (true.into(), false.into()),
        "{summary}"
    );
    for w in workers {
        assert_eq!(
            w["umem_balanced"], true,
            "even the worker that panicked: {w}"
        );
    }
    assert!(!xdp_attached(&pair), "detached at exit");
}

/// The XDP program's packet counters, by reason, from the API.
fn status_xdp() -> std::collections::BTreeMap<String, u64> {
    let status: serde_json::Value = rialto_testbed::http()
        .get("http://127.0.0.1:9600/api/v1/status")
        .call()
        .unwrap_or_else(|e| panic!("GET /api/v1/status: {e}"))
        .body_mut()
        .read_json()
        .unwrap();
    status["xdp"]
        .as_object()
        .unwrap_or_else(|| panic!("no xdp in {status}"))
        .iter()
        .map(|(reason, c)| (reason.clone(), c["packets"].as_u64().unwrap()))
        .collect()
}
