//! The balancer live, end to end: the real `rialto` binary in balance mode on
//! a two-queue veth pair, and in the peer namespace the kernel's own VXLAN
//! devices as the clusters' gateways, real TCP and UDP servers behind them
//! as the backends, and real sockets as clients.
//!
//! ```text
//!  peer namespace                                              node namespace
//!  client 198.18.0.2, fd00::2 --- VIPs ---------------------->  rialto
//!  vx100 (VNI 100, local 198.18.0.2) <--- VXLAN over IPv4 --->  198.18.0.1
//!     pod 198.19.1.10: TCP echo :8080, UDP echo :7007
//!  vx200 (VNI 200, local fd00::2)    <--- VXLAN over IPv6 --->  fd00::1
//!     pod fd00:119::10: TCP echo :8080
//! ```
//!
//! Replies leave the pods through the VXLAN devices (the SNAT pool is routed
//! into them), so they come back to Rialto on whichever queue the peer's
//! kernel picks: workers hand them to the worker owning the flow.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use rialto_testbed::{Pair, Rialto, in_netns, ip, tcp_echo, udp_echo, workers_total};

const BIN: &str = env!("CARGO_BIN_EXE_rialto");
const EAST_MAC: &str = "02:00:00:00:02:01";
const WEST_MAC: &str = "02:00:00:00:02:02";
/// What Rialto's tunnelled frames carry as inner source MAC.
const VTEP_MAC: &str = "02:00:00:00:01:01";

/// TCP connections per VIP, and what each uploads and gets echoed back:
/// more than fits one MTU, so path-MTU discovery through Rialto is needed.
const CONNECTIONS: usize = 12;
const UPLOAD: usize = 64 * 1024;
const DATAGRAM_FLOWS: usize = 8;
const DATAGRAMS: usize = 20;

/// The services of the first test.
const SERVICES: &str = r#"
[[service]]
name = "web"
vip = "198.18.100.1:80/TCP"
backends = [{ cluster = "east", addr = "198.19.1.10:8080" }]

[[service]]
name = "echo"
vip = "198.18.100.2:7/UDP"
backends = [{ cluster = "east", addr = "198.19.1.10:7007" }]

[[service]]
name = "web6"
vip = "[fd00:100::1]:80/TCP"
backends = [{ cluster = "west", addr = "[fd00:119::10]:8080" }]
"#;

/// The node, the SNAT pool and the two clusters, then `services`.
fn config(next_hop_mac: &str, services: &str) -> String {
    config_with(
        next_hop_mac,
        r#"addresses = ["198.18.200.1", "fd00:200::1"]
ports = "20000-29999""#,
        services,
    )
}

/// [`config`] with another `[snat]` table and more (`extra`, e.g. timeouts).
fn config_with(next_hop_mac: &str, snat: &str, services: &str) -> String {
    format!(
        r#"
[node]
vteps = ["198.18.0.1", "fd00::1"]
vtep_mac = "{VTEP_MAC}"
next_hop_mac = "{next_hop_mac}"
mtu = 1500

[snat]
{snat}

[[cluster]]
name = "east"
vni = 100
gateways = ["198.18.0.2"]
gateway_mac = "{EAST_MAC}"

[[cluster]]
name = "west"
vni = 200
gateways = ["fd00::2"]
gateway_mac = "{WEST_MAC}"
{services}"#
    )
}

fn mac_of(ns: &str, dev: &str) -> String {
    let out = ip(ns, &format!("-br link show dev {dev}"));
    out.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no MAC in {out:?}"))
        .to_owned()
}

/// The clusters' gateways in the peer namespace: a kernel VXLAN device per
/// cluster, the pod address on it, and Rialto's SNAT pool routed into it.
///
/// The gateways' links carry 1600 bytes and their VXLAN devices 1500, so the
/// pods announce an MSS that fits 1500 bytes of inner packet, and the client
/// (whose link is 1500 too) sends packets that Rialto, with an MTU of 1500
/// toward the clusters, cannot encapsulate: path-MTU discovery must work
/// through Rialto for the uploads to get through.
fn gateways(pair: &Pair) {
    let (ns, dev) = (pair.peer_ns.as_str(), pair.peer_if.as_str());
    ip(
        &pair.node_ns,
        &format!("link set {} mtu 1600", pair.node_if),
    );
    ip(ns, &format!("link set {dev} mtu 1600"));
    ip(ns, "route replace 198.18.100.0/24 via 198.18.0.1 mtu 1500");
    ip(ns, "-6 route replace fd00:100::/64 via fd00::1 mtu 1500");
    ip(
        ns,
        &format!(
            "link add vx100 address {EAST_MAC} type vxlan id 100 local 198.18.0.2 remote 198.18.0.1 dstport 4789 dev {dev}"
        ),
    );
    ip(ns, "addr add 198.19.1.10/24 dev vx100");
    ip(ns, "link set vx100 up");
    ip(ns, "route replace 198.18.200.0/28 dev vx100");
    ip(
        ns,
        &format!("neigh replace 198.18.200.1 lladdr {VTEP_MAC} dev vx100 nud permanent"),
    );
    ip(
        ns,
        &format!(
            "link add vx200 address {WEST_MAC} type vxlan id 200 local fd00::2 remote fd00::1 dstport 4789 dev {dev}"
        ),
    );
    ip(ns, "addr add fd00:119::10/64 dev vx200 nodad");
    ip(ns, "link set vx200 up");
    ip(ns, "-6 route replace fd00:200::/64 dev vx200");
    ip(
        ns,
        &format!("-6 neigh replace fd00:200::1 lladdr {VTEP_MAC} dev vx200 nud permanent"),
    );
}

/// Uploads `UPLOAD` bytes to `vip` on each of `CONNECTIONS` connections and
/// checks that each comes back whole.
fn tcp_round_trips(vip: SocketAddr) {
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            std::thread::spawn(move || {
                let payload: Vec<u8> = (0..UPLOAD).map(|i| (i * 7 + c) as u8).collect();
                let stream = TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connection {c} to {vip}: {e}"));
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let writer = {
                    let (mut stream, payload) = (stream.try_clone().unwrap(), payload.clone());
                    std::thread::spawn(move || {
                        stream.write_all(&payload).unwrap();
                        stream.shutdown(Shutdown::Write).unwrap();
                    })
                };
                let mut back = Vec::new();
                (&stream)
                    .read_to_end(&mut back)
                    .unwrap_or_else(|e| panic!("connection {c} to {vip}: {e}"));
                writer.join().unwrap();
                assert!(back == payload, "connection {c} to {vip}: echo differs");
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

fn udp_round_trips(vip: SocketAddr) {
    for flow in 0..DATAGRAM_FLOWS {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 2048];
        for seq in 0..DATAGRAMS {
            let payload = format!("flow {flow} datagram {seq}");
            socket.send_to(payload.as_bytes(), vip).unwrap();
            let (n, from) = socket
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("flow {flow} datagram {seq}: {e}"));
            assert_eq!(from, vip, "the answer comes from the VIP");
            assert_eq!(&buf[..n], payload.as_bytes());
        }
    }
}

#[test]
fn clients_reach_backends_behind_kernel_vxlan_gateways() {
    let pair = Pair::up(2);
    gateways(&pair);
    let path = std::env::temp_dir().join(format!("rialto-balance-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        config(&mac_of(&pair.peer_ns, &pair.peer_if), SERVICES),
    )
    .unwrap();
    tcp_echo(&pair.peer_ns, "198.19.1.10:8080".parse().unwrap());
    tcp_echo(&pair.peer_ns, "[fd00:119::10]:8080".parse().unwrap());
    udp_echo(&pair.peer_ns, "198.19.1.10:7007".parse().unwrap());

    let rialto = serve(&pair, &path, &[]);
    in_netns(&pair.peer_ns, || {
        tcp_round_trips("198.18.100.1:80".parse().unwrap());
        tcp_round_trips("[fd00:100::1]:80".parse().unwrap());
        udp_round_trips("198.18.100.2:7".parse().unwrap());
    });
    let (metrics, services) =
        in_netns(&pair.node_ns, || (get("/metrics"), get("/api/v1/services")));
    let view = rialto_testbed::output_within(
        rialto_testbed::netns_command(&pair.node_ns, BIN).args([
            "stats",
            "--count",
            "1",
            "--interval",
            "0.2",
        ]),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (status, summary) = rialto.terminate();
    std::fs::remove_file(&path).unwrap();
    assert!(
        status.success(),
        "rialto exits cleanly: {status}\n{summary}"
    );

    let count = |f: &dyn Fn(&serde_json::Value) -> &serde_json::Value| workers_total(&summary, f);
    let connections = 2 * CONNECTIONS as u64;
    assert_eq!(
        count(&|w| &w["balance"]["flows"]["created"]),
        connections + DATAGRAM_FLOWS as u64,
        "one flow per connection and per UDP socket: {summary}"
    );
    assert!(count(&|w| &w["balance"]["forward"]) > 0, "{summary}");
    assert!(count(&|w| &w["balance"]["reply"]) > 0, "{summary}");
    assert!(
        count(&|w| &w["balance"]["icmp_too_big"]) > 0,
        "uploads bigger than the tunnel's MTU made Rialto send ICMP: {summary}"
    );
    let (out, back) = (count(&|w| &w["handoff_out"]), count(&|w| &w["handoff_in"]));
    assert!(
        out > 0,
        "replies arrived at the worker not owning the flow: {summary}"
    );
    assert_eq!(out, back, "every frame handed over was taken: {summary}");
    for reason in [
        "malformed_ethernet",
        "malformed_ipv4",
        "malformed_ipv6",
        "malformed_tcp",
        "malformed_udp",
        "malformed_icmp",
        "malformed_vxlan",
        "handoff_full",
        "tx_ring_full",
        "no_headroom",
        "snat_exhausted",
        "unnamed",
    ] {
        assert_eq!(count(&|w| &w["drops"][reason]), 0, "{reason}: {summary}");
    }
    for w in summary["workers"].as_array().unwrap() {
        assert_eq!(w["umem_balanced"], true, "{w}");
        assert_eq!(w["umem"]["lent"], 0, "every lent frame came home: {w}");
        assert_eq!(w["umem"]["borrowed"], 0, "{w}");
    }

    // The metrics, read by a Prometheus text-format parser, agree with the
    // summary; the API lists the services; `rialto stats` shows both queues.
    let scrape = scrape(&metrics);
    let sum = |name: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(value)
            .sum()
    };
    assert_eq!(
        sum("rialto_forward_packets_total"),
        count(&|w| &w["balance"]["forward"]) as f64,
        "{metrics}"
    );
    assert_eq!(
        sum("rialto_flows"),
        connections as f64 + DATAGRAM_FLOWS as f64
    );
    assert!(sum("rialto_xdp_packets_total") > 0.0);
    assert!(sum("rialto_snat_ports") > 0.0, "{metrics}");
    let services: serde_json::Value = serde_json::from_str(&services).unwrap();
    let names: Vec<&str> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "echo", "web6"]);
    assert_eq!(services[0]["backends"][0]["slots"], 65537, "{services}");
    let view = String::from_utf8_lossy(&view.stdout);
    assert!(view.contains("config generation 0"), "{view}");
    // A row per queue: queue, rx/s, tx/s, drops/s, handoffs/s, flows, new/s.
    let rows: Vec<Vec<&str>> = view
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.len() == 7 && cells[0].parse::<u32>().is_ok())
        .collect();
    let queues: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(queues, ["0", "1"], "{view}");
    let flows: u64 = rows.iter().map(|r| r[5].parse::<u64>().unwrap()).sum();
    assert_eq!(
        flows,
        connections + DATAGRAM_FLOWS as u64,
        "the live flows of both workers: {view}"
    );
    assert!(view.contains("drops/s by reason: "), "{view}");
}

/// GET on the API of the rialto in this thread's namespace: the body.
/// `rialto run` on the pair's node end, with the config file `config` and
/// `extra` arguments.
fn serve(pair: &Pair, config: &std::path::Path, extra: &[&str]) -> Rialto {
    let args = [
        "--iface",
        &pair.node_if,
        "--config",
        config.to_str().unwrap(),
    ];
    Rialto::start(BIN, &pair.node_ns, &[&args[..], extra].concat())
}

/// `/metrics`, read by a Prometheus text-format parser.
fn scrape(metrics: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{metrics}"))
}

/// A counter's or gauge's value.
fn value(sample: &prometheus_parse::Sample) -> f64 {
    match sample.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
        _ => panic!("{} is neither counter nor gauge", sample.metric),
    }
}

fn get(path: &str) -> String {
    rialto_testbed::http()
        .get(&format!("http://127.0.0.1:9600{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// A TCP server that first says which pod it is, then echoes.
fn named_echo(ns: &str, at: &str, name: &'static str) {
    let listener = in_netns(ns, || TcpListener::bind(at).unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let (mut rx, mut tx) = (&stream, &stream);
                if tx.write_all(format!("{name}\n").as_bytes()).is_ok() {
                    let _ = std::io::copy(&mut rx, &mut tx);
                }
            });
        }
    });
}

/// The gateways, and pods a (198.19.1.10:8080) and b (.11) behind east's,
/// each answering with its name; the MAC of the peer's uplink.
fn two_pods(pair: &Pair) -> String {
    gateways(pair);
    ip(&pair.peer_ns, "addr add 198.19.1.11/24 dev vx100");
    named_echo(&pair.peer_ns, "198.19.1.10:8080", "a");
    named_echo(&pair.peer_ns, "198.19.1.11:8080", "b");
    mac_of(&pair.peer_ns, &pair.peer_if)
}

/// A connection to the web VIP and the pod that answered it.
struct Connection {
    stream: TcpStream,
    pod: String,
}

impl Connection {
    fn open() -> Self {
        let vip: SocketAddr = "198.18.100.1:80".parse().unwrap();
        let stream = TcpStream::connect_timeout(&vip, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut pod = Vec::new();
        let mut byte = [0u8; 1];
        while (&stream).read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
            pod.push(byte[0]);
        }
        Self {
            stream,
            pod: String::from_utf8(pod).unwrap(),
        }
    }

    /// One round trip on the connection.
    fn ping(&self) -> std::io::Result<()> {
        let payload = [0x5au8; 100];
        (&self.stream).write_all(&payload)?;
        let mut back = [0u8; 100];
        (&self.stream).read_exact(&mut back)?;
        assert_eq!(back, payload);
        Ok(())
    }
}

/// Datagrams to the echo VIP, one per millisecond, each waiting for its
/// answer: returns (sent, answered).
fn udp_stream(count: usize) -> (usize, usize) {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let vip: SocketAddr = "198.18.100.2:7".parse().unwrap();
    let mut answered = 0;
    let mut buf = [0u8; 64];
    for seq in 0..count {
        socket.send_to(&(seq as u64).to_be_bytes(), vip).unwrap();
        if matches!(socket.recv_from(&mut buf), Ok((8, _)) if buf[..8] == (seq as u64).to_be_bytes())
        {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (count, answered)
}

fn web(backends: &str) -> String {
    format!(
        r#"
[[service]]
name = "web"
vip = "198.18.100.1:80/TCP"
backends = [{backends}]

[[service]]
name = "echo"
vip = "198.18.100.2:7/UDP"
backends = [{{ cluster = "east", addr = "198.19.1.10:7007" }}]
"#
    )
}

const POD_A: &str = r#"{ cluster = "east", addr = "198.19.1.10:8080" }"#;
const POD_B: &str = r#"{ cluster = "east", addr = "198.19.1.11:8080" }"#;
const POD_B_DRAINING: &str =
    r#"{ cluster = "east", addr = "198.19.1.11:8080", state = "draining" }"#;

/// Reloads on SIGHUP under traffic: live connections keep their pod across
/// every reload, a draining pod keeps its connections and gets no new one,
/// a removed pod loses only its own, an invalid config changes nothing, and
/// a datagram stream through the reloads loses nothing.
#[test]
fn reloads_keep_live_flows_on_their_backends() {
    let pair = Pair::up(2);
    let mac = two_pods(&pair);
    udp_echo(&pair.peer_ns, "198.19.1.10:7007".parse().unwrap());
    let path = std::env::temp_dir().join(format!("rialto-reload-{}.toml", std::process::id()));
    let write = |services: &str| std::fs::write(&path, config(&mac, services)).unwrap();
    write(&web(&format!("{POD_A}, {POD_B}")));
    let rialto = serve(&pair, &path, &[]);
    let node_ns = pair.node_ns.clone();
    let reload = |services: &str| {
        write(services);
        rialto.signal(nix::sys::signal::Signal::SIGHUP);
        rialto.wait_for_log("config reloaded", Duration::from_secs(5))
    };

    // What the API says of web's backends: address and Maglev slots.
    let backends = || -> Vec<(String, u64)> {
        let services: serde_json::Value =
            serde_json::from_str(&in_netns(&node_ns, || get("/api/v1/services"))).unwrap();
        (services[0]["backends"].as_array().unwrap().iter())
            .map(|b| {
                (
                    b["addr"].as_str().unwrap().to_owned(),
                    b["slots"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let (stream, live, b_flows) = in_netns(&pair.peer_ns, || {
        let stream = std::thread::spawn(|| udp_stream(3000));
        let live: Vec<Connection> = (0..16).map(|_| Connection::open()).collect();
        let on = |pod: &str| live.iter().filter(|c| c.pod == pod).count();
        assert!(on("a") > 0 && on("b") > 0, "both pods get connections");
        assert_eq!(on("a") + on("b"), live.len());

        // b drains: every connection lives on, new ones all go to a.
        let before = backends();
        assert!(
            before.len() == 2 && before.iter().all(|(_, slots)| *slots > 0),
            "both backends hold slots: {before:?}"
        );
        reload(&web(&format!("{POD_A}, {POD_B_DRAINING}")));
        for c in &live {
            c.ping()
                .unwrap_or_else(|e| panic!("a connection to {} after draining b: {e}", c.pod));
        }
        let new: Vec<_> = (0..8).map(|_| Connection::open().pod).collect();
        assert!(
            new.iter().all(|p| p == "a"),
            "a draining pod gets no new flow: {new:?}"
        );
        // The API shows b draining, with exactly its live connections.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let services: serde_json::Value =
                serde_json::from_str(&in_netns(&node_ns, || get("/api/v1/services"))).unwrap();
            let b = &services[0]["backends"][1];
            if b["state"] == "draining" && b["slots"] == 0 && b["flows"] == on("b") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the API shows {services}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        // An invalid config is rejected through the API; nothing changes.
        std::fs::write(&path, "[node\n").unwrap();
        let answer = in_netns(&node_ns, || {
            rialto_testbed::http()
                .post("http://127.0.0.1:9600/api/v1/reload")
                .send_empty()
        });
        match answer {
            Err(ureq::Error::StatusCode(422)) => {}
            other => panic!("a bad reload is refused with 422, not {other:?}"),
        }
        let line = rialto.wait_for_log("reload rejected", Duration::from_secs(5));
        assert!(
            line.contains(".toml:1:6: unclosed table"),
            "the error says where: {line}"
        );
        for c in &live {
            c.ping()
                .unwrap_or_else(|e| panic!("a connection to {} after a bad reload: {e}", c.pod));
        }

        // b is removed: its connections are gone, a's live on.
        reload(&web(POD_A));
        let after = backends();
        assert_eq!(after.len(), 1, "only a is left: {after:?}");
        assert_eq!(after[0].1, 65537, "a holds every slot: {after:?}");
        for c in &live {
            if c.pod == "b" {
                // Its packets now go nowhere: do not wait long for them.
                let short = Some(Duration::from_millis(300));
                c.stream.set_read_timeout(short).unwrap();
            }
            match (c.pod.as_str(), c.ping()) {
                ("a", Err(e)) => panic!("a connection to a after removing b: {e}"),
                ("b", Ok(())) => panic!("a connection to the removed pod b still works"),
                _ => {}
            }
        }
        let new: Vec<_> = (0..8).map(|_| Connection::open().pod).collect();
        assert!(new.iter().all(|p| p == "a"), "{new:?}");
        (stream.join().unwrap(), live.len(), on("b"))
    });
    let (status, summary) = rialto.terminate();
    std::fs::remove_file(&path).unwrap();
    assert!(status.success(), "{status}\n{summary}");
    assert_eq!(
        stream.0, stream.1,
        "datagrams sent and answered through the reloads"
    );
    let count = |f: &dyn Fn(&serde_json::Value) -> &serde_json::Value| workers_total(&summary, f);
    assert_eq!(
        count(&|w| &w["balance"]["flows"]["reload_removed"]),
        b_flows as u64,
        "removing b removed b's flows and no other: {summary}"
    );
    assert!(live > b_flows);
}

/// The API's status of the rialto in this thread's namespace.
fn status() -> serde_json::Value {
    serde_json::from_str(&get("/api/v1/status")).unwrap()
}

/// A valid config that cannot be put in force is rolled back whole: when
/// the workers do not take its tables in time, and when the XDP maps refuse
/// one of its entries half way (each fault injected). Live and new
/// connections go on as before, the service it removed still answers, the
/// VIP it added is not steered, and the status says what happened.
#[test]
fn a_reload_that_cannot_be_put_in_force_is_rolled_back() {
    let pair = Pair::up(2);
    gateways(&pair);
    let mac = mac_of(&pair.peer_ns, &pair.peer_if);
    named_echo(&pair.peer_ns, "198.19.1.10:8080", "a");
    udp_echo(&pair.peer_ns, "198.19.1.10:7007".parse().unwrap());
    let path = std::env::temp_dir().join(format!("rialto-rollback-{}.toml", std::process::id()));
    // Drops `echo`, adds a UDP VIP.
    let next = format!(
        r#"
[[service]]
name = "web"
vip = "198.18.100.1:80/TCP"
backends = [{POD_A}]

[[service]]
name = "new"
vip = "198.18.100.3:7/UDP"
backends = [{{ cluster = "east", addr = "198.19.1.10:7007" }}]
"#
    );
    for fault in ["reload-stall", "map-update"] {
        std::fs::write(&path, config(&mac, &web(POD_A))).unwrap();
        let rialto = serve(&pair, &path, &["--inject-fault", fault]);
        let live = in_netns(&pair.peer_ns, Connection::open);
        std::fs::write(&path, config(&mac, &next)).unwrap();
        rialto.signal(nix::sys::signal::Signal::SIGHUP);
        let line = rialto.wait_for_log("reload rejected", Duration::from_secs(10));
        assert!(
            line.contains("rolled back, the running config stays in force"),
            "{fault}: {line}"
        );
        // Through the API, one reload at a time: a second while the first
        // stalls is refused, not queued.
        let rolled_back = if fault == "reload-stall" {
            let first = std::thread::spawn({
                let ns = pair.node_ns.clone();
                move || in_netns(&ns, || api_status(post_reload()))
            });
            std::thread::sleep(Duration::from_millis(500));
            let second = in_netns(&pair.node_ns, || api_status(post_reload()));
            assert_eq!(second, 409, "a reload while another runs");
            assert_eq!(
                first.join().unwrap(),
                503,
                "the stalled reload, rolled back"
            );
            2
        } else {
            1
        };
        let before = in_netns(&pair.node_ns, status);
        in_netns(&pair.peer_ns, || {
            live.ping()
                .unwrap_or_else(|e| panic!("{fault}: the live connection after the rollback: {e}"));
            assert_eq!(
                Connection::open().pod,
                "a",
                "{fault}: new connections as before"
            );
            assert_eq!(
                udp_stream(20),
                (20, 20),
                "{fault}: the service the reload removed still answers"
            );
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..5 {
                socket
                    .send_to(b"to the VIP the reload added", "198.18.100.3:7")
                    .unwrap();
            }
        });
        let after = in_netns(&pair.node_ns, status);
        let xdp =
            |s: &serde_json::Value, reason: &str| s["xdp"][reason]["packets"].as_u64().unwrap();
        assert!(
            xdp(&after, "pass_not_owned") >= xdp(&before, "pass_not_owned") + 5,
            "{fault}: the added VIP is not steered: {after}"
        );
        let reloads = &after["reloads"];
        assert_eq!(
            (reloads["ok"].as_u64(), reloads["rolled_back"].as_u64()),
            (Some(0), Some(rolled_back)),
            "{fault}: {reloads}"
        );
        assert_eq!(reloads["last"]["ok"], false, "{reloads}");
        let metrics = in_netns(&pair.node_ns, || get("/metrics"));
        assert!(
            metrics.contains(&format!(
                r#"rialto_reloads_total{{result="rolled_back"}} {rolled_back}"#
            )),
            "{metrics}"
        );
        let (status, summary) = rialto.terminate();
        assert!(status.success(), "{fault}: {status}\n{summary}");
    }
    std::fs::remove_file(&path).unwrap();
}

/// One raw HTTP/1.1 exchange with the API in this thread's namespace: the
/// status code of the answer (`None` if there was none).
/// `POST /api/v1/reload` with no body: reload the file.
fn post_reload() -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    rialto_testbed::http()
        .post("http://127.0.0.1:9600/api/v1/reload")
        .send_empty()
}

/// The status code of an API answer.
fn api_status(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> u16 {
    match r {
        Ok(r) => r.status().as_u16(),
        Err(ureq::Error::StatusCode(code)) => code,
        Err(e) => panic!("{e}"),
    }
}

fn raw_http(request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect("127.0.0.1:9600").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A reset while writing still leaves the answer to read.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// The operator API refuses what it must (bodies not meant as a config,
/// too large, headers too large), puts a config sent in the body in force
/// and makes it the config file, locates the problems of an invalid one,
/// and answers `/metrics` while a large config compiles.
#[test]
fn the_api_bounds_requests_and_never_waits_for_a_reload() {
    let pair = Pair::up(1);
    gateways(&pair);
    let mac = mac_of(&pair.peer_ns, &pair.peer_if);
    let path = std::env::temp_dir().join(format!("rialto-api-{}.toml", std::process::id()));
    let first = config(&mac, &web(POD_A));
    std::fs::write(&path, &first).unwrap();
    let rialto = serve(&pair, &path, &[]);
    let post = |body: &str, kind: &str| {
        rialto_testbed::http()
            .post("http://127.0.0.1:9600/api/v1/reload")
            .header("Content-Type", kind)
            .send(body)
    };
    in_netns(&pair.node_ns, || {
        let garbage = "x".repeat(10 << 20);
        assert_eq!(api_status(post(&garbage, "application/octet-stream")), 415);
        let huge = format!(
            "POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nContent-Type: application/toml\r\nContent-Length: {}\r\n\r\n",
            17 << 20
        );
        assert_eq!(raw_http(huge.as_bytes()), Some(413), "a body beyond 16 MiB");
        let long_header = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
            "y".repeat(20 << 10)
        );
        assert_eq!(
            raw_http(long_header.as_bytes()),
            Some(431),
            "headers beyond 16 KiB"
        );
        // A client that sends a byte a second is cut off at the request's
        // deadline, however steadily it sends.
        let mut slow = TcpStream::connect("127.0.0.1:9600").unwrap();
        slow.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain(&[b'y'; 20])
        {
            if slow.write_all(&[*byte]).is_err() {
                break;
            }
            let mut buf = [0; 512];
            match slow.read(&mut buf) {
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let cut_after = started.elapsed();
        let _ = slow.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408 "),
            "the slow request is answered 408: {answer:?}"
        );
        assert!(
            cut_after < Duration::from_secs(9),
            "cut off after {cut_after:?}, the deadline is 5 s"
        );
        let reloads = || status()["reloads"].clone();
        assert_eq!(reloads()["ok"], 0, "nothing was reloaded");
        assert_eq!(reloads()["rejected"], 0, "nothing was even tried");

        // An invalid config in the body: 422, located; nothing changes.
        let r = post(
            "[node]\nvteps = [\"198.18.0.1\"]\nmtu = 70000\n",
            "application/toml",
        );
        let Err(ureq::Error::StatusCode(422)) = r else {
            panic!("an invalid config is refused with 422, not {r:?}");
        };
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            first,
            "the file is untouched"
        );
        let r = rialto_testbed::http()
            .post("http://127.0.0.1:9600/api/v1/reload")
            .config()
            .http_status_as_error(false)
            .build()
            .header("Content-Type", "application/toml")
            .send("[node\n")
            .unwrap();
        let body: serde_json::Value = serde_json::from_reader(r.into_body().into_reader()).unwrap();
        let located = body["problems"][0].as_str().unwrap_or_default();
        assert!(
            located.ends_with(".toml:1:6: unclosed table, expected `]`"),
            "{body}"
        );

        // A valid one: in force, and the config file from now on.
        let second = config(&mac, &web(&format!("{POD_A}, {POD_B}")));
        assert_eq!(api_status(post(&second, "application/toml")), 200);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            second,
            "the file is the config sent"
        );
        let services: serde_json::Value = serde_json::from_str(&get("/api/v1/services")).unwrap();
        assert_eq!(
            services[0]["backends"].as_array().unwrap().len(),
            2,
            "{services}"
        );
        assert_eq!(reloads()["ok"], 1);

        // A config whose Maglev tables take seconds to build: scrapes
        // answer meanwhile, each far sooner than the reload.
        let large: String = (0..150)
            .map(|i| {
                format!(
                    "\n[[service]]\nname = \"big{i}\"\nvip = \"198.18.100.{}:{}/TCP\"\ntable_size = 1000003\nbackends = [{POD_A}]\n",
                    10 + i / 50,
                    1000 + i
                )
            })
            .collect();
        let large = config(&mac, &format!("{}{large}", web(POD_A)));
        let slowest = std::thread::scope(|s| {
            let reload = s.spawn(|| {
                let start = std::time::Instant::now();
                assert_eq!(api_status(post(&large, "application/toml")), 200);
                start.elapsed()
            });
            let mut slowest = Duration::ZERO;
            while !reload.is_finished() {
                let start = std::time::Instant::now();
                get("/metrics");
                slowest = slowest.max(start.elapsed());
                std::thread::sleep(Duration::from_millis(50));
            }
            let took = reload.join().unwrap();
            println!("a reload of {took:?}; the slowest scrape meanwhile {slowest:?}");
            assert!(
                took > Duration::from_secs(1),
                "the reload is slow enough to tell: {took:?}"
            );
            slowest
        });
        assert!(
            slowest < Duration::from_secs(1),
            "a scrape waited {slowest:?} for the reload"
        );
    });
    let (status, summary) = rialto.terminate();
    std::fs::remove_file(&path).unwrap();
    assert!(status.success(), "{status}\n{summary}");
}

/// A TCP server that first says the address its client came from (the
/// SNAT address Rialto gave the connection), then echoes.
fn peer_echo(ns: &str, at: &str) {
    let listener = in_netns(ns, || TcpListener::bind(at).unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let (mut rx, mut tx) = (&stream, &stream);
                let peer = stream
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                if tx.write_all(format!("{peer}\n").as_bytes()).is_ok() {
                    let _ = std::io::copy(&mut rx, &mut tx);
                }
            });
        }
    });
}

/// Sends `count` datagrams to `to` from the peer namespace, straight over
/// the link (the peer routes the SNAT pool into its VXLAN device: a host
/// route through the node stands in for the while); what the XDP program
/// counted meanwhile, by reason (packets).
fn steered(pair: &Pair, to: &str, count: usize) -> std::collections::BTreeMap<String, u64> {
    let host = to.split(':').next().unwrap();
    let route = format!("route replace {host}/32 via 198.18.0.1");
    ip(&pair.peer_ns, &route);
    let xdp = || -> std::collections::BTreeMap<String, u64> {
        let status = in_netns(&pair.node_ns, status);
        status["xdp"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(r, c)| (r.clone(), c["packets"].as_u64().unwrap()))
            .collect()
    };
    let before = xdp();
    in_netns(&pair.peer_ns, || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..count {
            socket.send_to(b"probe", to).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let after = xdp();
    ip(&pair.peer_ns, &format!("route del {host}/32"));
    after
        .iter()
        .map(|(r, n)| (r.clone(), n - before[r]))
        .collect()
}

/// A reload that removes a VIP and a SNAT address and adds others: the XDP
/// program steers what is new and no longer what is gone; connections on
/// a kept SNAT address live on, those on the removed one are removed and
/// counted exactly; new connections never get the removed address.
#[test]
fn a_reload_that_changes_vips_and_snat_addresses_moves_only_what_it_must() {
    let pair = Pair::up(2);
    gateways(&pair);
    for addr in ["198.18.200.2", "198.18.200.3"] {
        ip(
            &pair.peer_ns,
            &format!("neigh replace {addr} lladdr {VTEP_MAC} dev vx100 nud permanent"),
        );
    }
    let mac = mac_of(&pair.peer_ns, &pair.peer_if);
    peer_echo(&pair.peer_ns, "198.19.1.10:8080");
    udp_echo(&pair.peer_ns, "198.19.1.10:7007".parse().unwrap());
    let services = |echo_vip: &str| {
        format!(
            r#"
[[service]]
name = "web"
vip = "198.18.100.1:80/TCP"
backends = [{POD_A}]

[[service]]
name = "echo"
vip = "{echo_vip}"
backends = [{{ cluster = "east", addr = "198.19.1.10:7007" }}]
"#
        )
    };
    let snat = |addrs: &str| format!("addresses = [{addrs}]\nports = \"20000-29999\"");
    let path = std::env::temp_dir().join(format!("rialto-moves-{}.toml", std::process::id()));
    let first = config_with(
        &mac,
        &snat(r#""198.18.200.1", "198.18.200.2""#),
        &services("198.18.100.2:7/UDP"),
    );
    let second = config_with(
        &mac,
        &snat(r#""198.18.200.2", "198.18.200.3""#),
        &services("198.18.100.4:7/UDP"),
    );
    std::fs::write(&path, &first).unwrap();
    let rialto = serve(&pair, &path, &[]);
    // The connections, each with the SNAT address the pod saw.
    let live: Vec<Connection> = in_netns(&pair.peer_ns, || {
        (0..16).map(|_| Connection::open()).collect()
    });
    let on = |addr: &str| live.iter().filter(|c| c.pod == addr).count();
    assert_eq!(on("198.18.200.1") + on("198.18.200.2"), live.len());
    assert!(
        on("198.18.200.1") > 0 && on("198.18.200.2") > 0,
        "both addresses in use: {:?}",
        live.iter().map(|c| &c.pod).collect::<Vec<_>>()
    );

    // What is steered before the reload, and after.
    let probe = |to: &str| steered(&pair, to, 5);
    let before = [
        probe("198.18.100.2:7"),
        probe("198.18.100.4:7"),
        probe("198.18.200.1:9"),
        probe("198.18.200.3:9"),
    ];
    assert_eq!(
        [
            before[0]["redirect_vip"],
            before[1]["redirect_vip"],
            before[2]["redirect_snat"],
            before[3]["redirect_snat"]
        ],
        [5, 0, 5, 0],
        "before: {before:?}"
    );
    std::fs::write(&path, &second).unwrap();
    rialto.signal(nix::sys::signal::Signal::SIGHUP);
    rialto.wait_for_log("config reloaded", Duration::from_secs(5));
    let after = [
        probe("198.18.100.2:7"),
        probe("198.18.100.4:7"),
        probe("198.18.200.1:9"),
        probe("198.18.200.3:9"),
    ];
    assert_eq!(
        [
            after[0]["redirect_vip"],
            after[1]["redirect_vip"],
            after[2]["redirect_snat"],
            after[3]["redirect_snat"]
        ],
        [0, 5, 0, 5],
        "after: {after:?}"
    );
    for (probe, to) in [
        (&after[0], "the removed VIP"),
        (&after[2], "the removed SNAT address"),
    ] {
        assert!(
            probe["pass_not_owned"] >= 5,
            "{to} goes to the kernel: {probe:?}"
        );
    }

    in_netns(&pair.peer_ns, || {
        for c in &live {
            if c.pod == "198.18.200.1" {
                c.stream
                    .set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
            }
            match (c.pod.as_str(), c.ping()) {
                ("198.18.200.2", Err(e)) => panic!("a connection on the kept address: {e}"),
                ("198.18.200.1", Ok(())) => {
                    panic!("a connection on the removed address still works")
                }
                _ => {}
            }
        }
        let new: Vec<String> = (0..16).map(|_| Connection::open().pod).collect();
        assert!(
            new.iter()
                .all(|a| a == "198.18.200.2" || a == "198.18.200.3"),
            "new connections get the addresses in force: {new:?}"
        );
        assert_eq!(
            udp_stream_to("198.18.100.4:7", 10),
            (10, 10),
            "the new VIP answers"
        );
    });
    let (status, summary) = rialto.terminate();
    std::fs::remove_file(&path).unwrap();
    assert!(status.success(), "{status}\n{summary}");
    let count = |f: &dyn Fn(&serde_json::Value) -> &serde_json::Value| workers_total(&summary, f);
    // The probes of the removed VIP made one flow, removed with its VIP.
    assert_eq!(
        count(&|w| &w["balance"]["flows"]["reload_removed"]),
        on("198.18.200.1") as u64 + 1,
        "exactly the flows on the removed address, and the removed VIP's: {summary}"
    );
}

/// `count` datagrams to `vip`, each waiting for its answer: (sent, answered).
fn udp_stream_to(vip: &str, count: usize) -> (usize, usize) {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut answered = 0;
    let mut buf = [0u8; 64];
    for seq in 0..count {
        socket.send_to(&(seq as u64).to_be_bytes(), vip).unwrap();
        if matches!(socket.recv_from(&mut buf), Ok((8, _)) if buf[..8] == (seq as u64).to_be_bytes())
        {
            answered += 1;
        }
    }
    (count, answered)
}

/// The UDP SNAT ports of every worker: (free, in the slices).
fn udp_ports(status: &serde_json::Value) -> (u64, u64) {
    let mut ports = (0, 0);
    for w in status["workers"].as_array().unwrap() {
        for s in w["snat"].as_array().into_iter().flatten() {
            if s["proto"] == "udp" && s["addr"] == "198.18.200.1" {
                ports.0 += s["free"].as_u64().unwrap();
                ports.1 += s["slice"].as_u64().unwrap();
            }
        }
    }
    ports
}

/// Four SNAT ports and a UDP timeout of 2 s: the fifth and sixth flows get
/// none (counted as snat_exhausted), the ports come back once the flows
/// expire, and then new flows get them.
#[test]
fn snat_ports_run_out_and_come_back() {
    let pair = Pair::up(1);
    gateways(&pair);
    let mac = mac_of(&pair.peer_ns, &pair.peer_if);
    udp_echo(&pair.peer_ns, "198.19.1.10:7007".parse().unwrap());
    let path = std::env::temp_dir().join(format!("rialto-ports-{}.toml", std::process::id()));
    let services = r#"
[timeouts]
udp = 2

[[service]]
name = "echo"
vip = "198.18.100.2:7/UDP"
backends = [{ cluster = "east", addr = "198.19.1.10:7007" }]
"#;
    std::fs::write(
        &path,
        config_with(
            &mac,
            "addresses = [\"198.18.200.1\"]\nports = \"20000-20003\"",
            services,
        ),
    )
    .unwrap();
    let rialto = serve(&pair, &path, &[]);
    // One datagram on each of six sockets, each a flow.
    let answered = |flows: usize| {
        in_netns(&pair.peer_ns, || {
            (0..flows)
                .filter(|_| udp_stream_to("198.18.100.2:7", 1).1 == 1)
                .count()
        })
    };
    assert_eq!(answered(6), 4, "four ports, four flows");
    let status_now = in_netns(&pair.node_ns, status);
    let w = &status_now["workers"][0];
    assert_eq!(w["drops"]["snat_exhausted"], 2, "{w}");
    assert_eq!(w["balance"]["flows"]["created"], 4, "{w}");
    // Wait for the flows to expire and their ports to come back (a few s).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let expired = loop {
        let status_now = in_netns(&pair.node_ns, status);
        if udp_ports(&status_now) == (4, 4) {
            break status_now["workers"][0]["balance"]["flows"]["expired"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ports did not come back: {status_now}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(expired, 4, "the four flows expired");
    assert_eq!(answered(4), 4, "new flows get the ports back");
    let (status, summary) = rialto.terminate();
    std::fs::remove_file(&path).unwrap();
    assert!(status.success(), "{status}\n{summary}");
    let w = &summary["workers"][0];
    assert_eq!(w["balance"]["flows"]["created"], 8, "{w}");
    assert_eq!(w["drops"]["snat_exhausted"], 2, "{w}");
}

/// Four queues, an inbox of one frame, a burst of replies landing on every
/// queue: frames the inbox has no room for are dropped and counted as
/// handoff_full; every frame handed over is taken, and every UMEM frame
/// comes home.
#[test]
fn an_overflowing_handoff_inbox_drops_and_counts_and_loses_no_frame() {
    let pair = Pair::up(4);
    gateways(&pair);
    let mac = mac_of(&pair.peer_ns, &pair.peer_if);
    udp_echo(&pair.peer_ns, "198.19.1.10:7007".parse().unwrap());
    let path = std::env::temp_dir().join(format!("rialto-inbox-{}.toml", std::process::id()));
    std::fs::write(&path, config(&mac, SERVICES)).unwrap();
    let rialto = serve(&pair, &path, &["--handoff-queue", "1"]);
    in_netns(&pair.peer_ns, || {
        std::thread::scope(|s| {
            for _ in 0..32 {
                s.spawn(|| {
                    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                    for seq in 0..200u32 {
                        let _ = socket.send_to(&seq.to_be_bytes(), "198.18.100.2:7");
                    }
                });
            }
        });
    });
    std::thread::sleep(Duration::from_millis(500));
    let (status, summary) = rialto.terminate();
    std::fs::remove_file(&path).unwrap();
    assert!(status.success(), "{status}\n{summary}");
    let count = |f: &dyn Fn(&serde_json::Value) -> &serde_json::Value| workers_total(&summary, f);
    assert!(
        count(&|w| &w["drops"]["handoff_full"]) > 0,
        "the inbox overflowed: {summary}"
    );
    assert_eq!(
        count(&|w| &w["handoff_out"]),
        count(&|w| &w["handoff_in"]),
        "every frame handed over was taken: {summary}"
    );
    for w in summary["workers"].as_array().unwrap() {
        assert_eq!(w["umem_balanced"], true, "{w}");
        assert_eq!(
            (w["umem"]["lent"].as_u64(), w["umem"]["borrowed"].as_u64()),
            (Some(0), Some(0)),
            "{w}"
        );
    }
}

/// One round trip on each of the `live` connections, from the peer; panics
/// saying `what` and how many broke (reset, or stalled past the 2 s read
/// timeout) if any did.
fn ping_all(pair: &Pair, live: &[Connection], what: &str) {
    let broken: Vec<String> = in_netns(&pair.peer_ns, || {
        (live.iter())
            .filter_map(|c| c.ping().err().map(|e| format!("to {}: {e}", c.pod)))
            .collect()
    });
    assert!(
        broken.is_empty(),
        "{what}: {} of {} connections broken: {broken:?}",
        broken.len(),
        live.len()
    );
}

/// Flips a byte of the first live flow in a saved flow table of the state
/// directory `dir` (state versions 2 and 3: slots of 48 bytes, the mark
/// at byte 45, 2 or 3 when live); returns how many live flows that table
/// holds.
fn corrupt_a_flow(dir: &std::path::Path) -> u64 {
    const HEADER: usize = 4096;
    const SLOT: usize = 48;
    const MARK: usize = 45;
    for queue in 0..8 {
        let path = dir.join(format!("flows-q{queue}.bin"));
        let Ok(mut bytes) = std::fs::read(&path) else {
            continue;
        };
        let live: Vec<usize> = (HEADER..bytes.len())
            .step_by(SLOT)
            .filter(|&at| bytes[at + MARK] & !1 == 2)
            .collect();
        if let Some(&at) = live.first() {
            bytes[at] ^= 0x40; // the first byte of the flow's client address
            std::fs::write(&path, bytes).unwrap();
            return live.len() as u64;
        }
    }
    panic!("no live flow in {}", dir.display());
}

/// A crash (kill -9) and a restart break no connection: the flows are read
/// back from the state directory and every connection goes on. A restart
/// after a clean stop, with a config that removed a backend, keeps what a
/// reload would keep. A table with a byte flipped is refused with a clear
/// message, the others are resumed, and new connections are served.
#[test]
fn a_restart_after_a_crash_resumes_every_flow() {
    let pair = Pair::up(2);
    let mac = two_pods(&pair);
    let path = std::env::temp_dir().join(format!("rialto-restart-{}.toml", std::process::id()));
    std::fs::write(&path, config(&mac, &web(&format!("{POD_A}, {POD_B}")))).unwrap();
    let args = ["--iface", &pair.node_if, "--config", path.to_str().unwrap()];
    let resumed = |what: &str| -> serde_json::Value {
        let status = in_netns(&pair.node_ns, status);
        let resumed = status["resumed"].clone();
        assert!(resumed.is_object(), "{what}: {status}");
        resumed
    };
    let ping_all = |live: &[Connection], what: &str| ping_all(&pair, live, what);

    let rialto = Rialto::start(BIN, &pair.node_ns, &args);
    assert_eq!(resumed("a fresh start")["recovered"], 0);
    let live: Vec<Connection> = in_netns(&pair.peer_ns, || {
        (0..16).map(|_| Connection::open()).collect()
    });
    let on = |pod: &str| live.iter().filter(|c| c.pod == pod).count() as u64;
    let (on_a, on_b) = (on("a"), on("b"));
    assert!(on_a > 0 && on_b > 0, "both pods get connections");
    ping_all(&live, "before the crash");
    rialto.kill();

    let rialto = Rialto::start(BIN, &pair.node_ns, &args);
    let after_crash = resumed("after kill -9");
    assert_eq!(after_crash["recovered"], 16, "{after_crash}");
    assert_eq!(after_crash["torn"], 0, "{after_crash}");
    ping_all(&live, "after kill -9 and a restart");

    // A clean stop, then a config without b: what a reload would keep.
    let (status, summary) = rialto.terminate();
    assert!(status.success(), "{summary}");
    assert_eq!(summary["resumed"]["recovered"], 16, "{summary}");
    std::fs::write(&path, config(&mac, &web(POD_A))).unwrap();
    let rialto = Rialto::start(BIN, &pair.node_ns, &args);
    let without_b = resumed("after a restart without b");
    assert_eq!(
        (without_b["recovered"].as_u64(), without_b["gone"].as_u64()),
        (Some(on_a), Some(on_b)),
        "{without_b}"
    );
    let kept: Vec<Connection> = live.into_iter().filter(|c| c.pod == "a").collect();
    ping_all(&kept, "a's connections after a restart without b");

    // A table with a flipped byte is not trusted; the rest is.
    rialto.kill();
    let lost = corrupt_a_flow(&rialto_testbed::state_dir(&pair.node_ns));
    let rialto = Rialto::start(BIN, &pair.node_ns, &args);
    let line = rialto.wait_for_log("saved flows not trusted", Duration::from_secs(5));
    assert!(
        line.contains("does not check out") && line.contains(&format!("{lost} flows discarded")),
        "{line}"
    );
    let corrupt = resumed("after a corrupt table");
    assert_eq!(
        (corrupt["discarded"].as_u64(), corrupt["recovered"].as_u64()),
        (Some(lost), Some(on_a - lost)),
        "{corrupt}"
    );
    in_netns(&pair.peer_ns, || {
        assert_eq!(Connection::open().pod, "a", "new connections are served");
    });
    let (status, summary) = rialto.terminate();
    assert!(status.success(), "{summary}");
    std::fs::remove_file(&path).unwrap();
}

/// `rialto run --take-over` started while a Rialto serves: a refused one
/// (another handover protocol; no Rialto at the state directory named)
/// exits with its reason and the running one serves on untouched; an
/// accepted one takes over, the old one exits with its UMEM ledger
/// balanced, and every connection goes on with the new one.
#[test]
fn a_take_over_keeps_every_connection_and_a_refused_one_changes_nothing() {
    let pair = Pair::up(2);
    let mac = two_pods(&pair);
    let path = std::env::temp_dir().join(format!("rialto-takeover-{}.toml", std::process::id()));
    std::fs::write(&path, config(&mac, &web(&format!("{POD_A}, {POD_B}")))).unwrap();
    let args = ["--iface", &pair.node_if, "--config", path.to_str().unwrap()];
    let ping_all = |live: &[Connection], what: &str| ping_all(&pair, live, what);
    let take_over_error = |extra: &[&str]| -> String {
        let mut cmd = rialto_testbed::netns_command(&pair.node_ns, BIN);
        cmd.arg("run").args(args).arg("--take-over").args(extra);
        if !extra.contains(&"--state-dir") {
            cmd.arg("--state-dir")
                .arg(rialto_testbed::state_dir(&pair.node_ns));
        }
        let out = rialto_testbed::output_within(&mut cmd, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("a refused take-over ends at once: {e}"));
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    };

    let old = Rialto::start(BIN, &pair.node_ns, &args);
    let live: Vec<Connection> = in_netns(&pair.peer_ns, || {
        (0..16).map(|_| Connection::open()).collect()
    });
    ping_all(&live, "before");

    let refused = take_over_error(&["--inject-fault", "take-over-protocol"]);
    assert!(
        refused.starts_with("rialto: error: take-over refused: this rialto (pid ")
            && refused.contains(&format!(
                "hands over with protocol 1 and state version {}",
                rialto::state::STATE_VERSION
            ))
            && refused.contains("asked with protocol 1001"),
        "{refused}"
    );
    let elsewhere = format!("/dev/shm/rialto-testbed/{}-elsewhere", pair.node_ns);
    let nobody = take_over_error(&["--state-dir", &elsewhere]);
    let _ = std::fs::remove_dir_all(&elsewhere);
    assert!(
        nobody.starts_with("rialto: error: nothing to take over: no rialto listens at "),
        "{nobody}"
    );
    ping_all(&live, "after two refused take-overs");
    assert_eq!(
        in_netns(&pair.node_ns, status)["reloads"]["ok"],
        0,
        "the running rialto is as it was"
    );

    take_over(&pair, &args, old, &live);
    std::fs::remove_file(&path).unwrap();
}

/// This Rialto takes over from `old`, running with `args`, while the
/// connections `live` are open: the old one exits cleanly, every
/// connection answers after, and every flow was recovered.
fn take_over(pair: &Pair, args: &[&str], old: Rialto, live: &[Connection]) {
    let new = Rialto::start(BIN, &pair.node_ns, &[args, &["--take-over"]].concat());
    let line = new.wait_for_log("took over", Duration::from_secs(5));
    assert!(line.contains("millis="), "{line}");
    let (status_old, summary) = old.wait_exit();
    assert!(status_old.success(), "{summary}");
    for w in summary["workers"].as_array().unwrap() {
        assert_eq!(w["umem_balanced"], true, "the old one's frames: {w}");
    }
    ping_all(pair, live, "after the take-over");
    let resumed = in_netns(&pair.node_ns, status)["resumed"].clone();
    assert_eq!(resumed["recovered"], live.len(), "{resumed}");
    assert!(resumed["take_over_millis"].is_u64(), "{resumed}");
    println!("{line}");
    let (status_new, summary) = new.terminate();
    assert!(status_new.success(), "{summary}");
    for w in summary["workers"].as_array().unwrap() {
        assert_eq!(w["umem_balanced"], true, "the new one's frames: {w}");
    }
}

/// An upgrade from an older Rialto, one that writes an older state
/// version (`RIALTO_OLDER`, its binary), keeps every connection: it hands
/// over, and this one reads its flow tables back. Needs that binary:
/// `bash testbed/upgrade-from.sh COMMIT` builds it and runs this test.
#[test]
#[ignore = "needs an older rialto: run by testbed/upgrade-from.sh"]
fn an_upgrade_from_an_older_rialto_keeps_every_connection() {
    let older = std::env::var("RIALTO_OLDER")
        .expect("RIALTO_OLDER names no binary: run testbed/upgrade-from.sh COMMIT");
    let pair = Pair::up(2);
    let mac = two_pods(&pair);
    let path = std::env::temp_dir().join(format!("rialto-older-{}.toml", std::process::id()));
    std::fs::write(&path, config(&mac, &web(&format!("{POD_A}, {POD_B}")))).unwrap();
    let args = ["--iface", &pair.node_if, "--config", path.to_str().unwrap()];
    let old = Rialto::start(&older, &pair.node_ns, &args);
    let live: Vec<Connection> = in_netns(&pair.peer_ns, || {
        (0..16).map(|_| Connection::open()).collect()
    });
    ping_all(&pair, &live, "before");
    take_over(&pair, &args, old, &live);
    std::fs::remove_file(&path).unwrap();
}

/// What a service manager hears on its notify socket (`NOTIFY_SOCKET`),
/// and from which process (`SO_PASSCRED`, as systemd asks).
struct Notifications(std::os::unix::net::UnixDatagram);

impl Notifications {
    fn bind(path: &std::path::Path) -> Self {
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self(socket)
    }

    /// The next message (within the read timeout), and its sender's PID.
    fn next(&self) -> Option<(u32, String)> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 4096];
        let (sender, n) = {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!(UnixCredentials);
            let fd = self.0.as_raw_fd();
            let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::empty()).ok()?;
            let sender = msg.cmsgs().ok()?.find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(c) => u32::try_from(c.pid()).ok(),
                _ => None,
            })?;
            (sender, msg.bytes)
        };
        Some((sender, String::from_utf8_lossy(&buf[..n]).into_owned()))
    }

    /// Waits (within 30 s) for a message saying `READY=1` with a
    /// `MAINPID`; returns that PID, and the messages heard before it with
    /// their senders.
    fn ready(&self) -> (u32, Vec<(u32, String)>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut heard = Vec::new();
        while Instant::now() < deadline {
            let Some((sender, message)) = self.next() else {
                continue;
            };
            let pid = message
                .lines()
                .find_map(|l| l.strip_prefix("MAINPID="))
                .and_then(|p| p.parse().ok());
            if let (Some(pid), true) = (pid, message.lines().any(|l| l == "READY=1")) {
                return (pid, heard);
            }
            heard.push((sender, message));
        }
        panic!("no READY=1 with a MAINPID within 30 s; heard {heard:?}");
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaps).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
    })
}

/// An upgrade as the systemd unit makes it (`systemctl kill -s USR2`):
/// the running Rialto starts its own binary again with `--take-over`;
/// the old one names the new one the main process (`MAINPID`) before it
/// lets go and exits, the new one says it is ready (`READY=1`), and every
/// connection goes on.
#[test]
fn sigusr2_upgrades_in_place_and_tells_the_service_manager() {
    let pair = Pair::up(2);
    let mac = two_pods(&pair);
    let dir = std::env::temp_dir().join(format!("rialto-usr2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("border.toml");
    std::fs::write(
        &config_path,
        config(&mac, &web(&format!("{POD_A}, {POD_B}"))),
    )
    .unwrap();
    let socket = dir.join("notify");
    let notifications = Notifications::bind(&socket);
    // Its output to files: the new process inherits them and outlives it.
    let old = rialto_testbed::netns_command(&pair.node_ns, BIN)
        .arg("run")
        .args([
            "--iface",
            &pair.node_if,
            "--config",
            config_path.to_str().unwrap(),
        ])
        .arg("--state-dir")
        .arg(rialto_testbed::state_dir(&pair.node_ns))
        .env("NOTIFY_SOCKET", &socket)
        .stdout(std::fs::File::create(dir.join("summary.json")).unwrap())
        .stderr(std::fs::File::create(dir.join("rialto.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.join("rialto.log")).unwrap_or_default();
    let (first, _) = notifications.ready();
    assert_eq!(first, old.id(), "the first rialto is the main process");
    let live: Vec<Connection> = in_netns(&pair.peer_ns, || {
        (0..16).map(|_| Connection::open()).collect()
    });
    ping_all(&pair, &live, "before the upgrade");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let (second, before) = notifications.ready();
    assert_ne!(second, first, "the new rialto says it is the main process");
    // The old one named it the main process before it exited: a service
    // manager would otherwise take the old one's exit for the service's.
    assert!(
        before.contains(&(first, format!("MAINPID={second}\n"))),
        "the old rialto named its successor the main process: {before:?}"
    );
    let exited = rialto_testbed::wait_within(old, Duration::from_secs(20))
        .unwrap_or_else(|(what, _)| panic!("the old rialto {what}:\n{}", log()));
    assert!(exited.status.success(), "{}", log());
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(summary.lines().next().unwrap_or_default()).unwrap();
    for w in summary["workers"].as_array().unwrap() {
        assert_eq!(w["umem_balanced"], true, "the old one's frames: {w}");
    }
    ping_all(&pair, &live, "after the upgrade");
    assert_eq!(in_netns(&pair.node_ns, status)["resumed"]["recovered"], 16);

    let pid = nix::unistd::Pid::from_raw(second as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gone(second) {
        assert!(
            Instant::now() < deadline,
            "the new rialto did not stop:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        log().contains("upgrade: a new rialto takes over"),
        "{}",
        log()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A worker's flow-table slots, in the state directory's file, are in 2 MB
/// pages on a tmpfs mounted with `huge=` (as `dev-shm-rialto.mount` mounts
/// the state directories) and in 4 KB pages on `/dev/shm` as it is; the
/// metrics say which (`rialto_flow_table_huge_page_bytes`, by part).
#[test]
fn the_metrics_say_whether_the_flow_slots_are_in_huge_pages() {
    let pair = Pair::up(1);
    gateways(&pair);
    let mac = mac_of(&pair.peer_ns, &pair.peer_if);
    named_echo(&pair.peer_ns, "198.19.1.10:8080", "a");
    let huge = rialto_testbed::Tmpfs::mount("huge=within_size,mode=0700");
    // The config in the tmpfs too: gone with it, whatever happens.
    let path = huge.dir.join("rialto.toml");
    std::fs::write(&path, config(&mac, &web(POD_A))).unwrap();
    // The slots' bytes, resident and in 2 MB pages, with a connection's
    // flow in them, Rialto keeping its state in `state_dir`.
    let slots = |state_dir: &str| {
        let rialto = serve(&pair, &path, &["--state-dir", state_dir]);
        let live = in_netns(&pair.peer_ns, Connection::open);
        live.ping().unwrap();
        let metrics = in_netns(&pair.node_ns, || get("/metrics"));
        let (status, summary) = rialto.terminate();
        assert!(status.success(), "{summary}");
        let scrape = scrape(&metrics);
        let of_slots = |name: &str| -> f64 {
            let sample = scrape
                .samples
                .iter()
                .find(|s| s.metric == name && s.labels.get("part") == Some("slots"))
                .unwrap_or_else(|| panic!("no {name} of the slots:\n{metrics}"));
            value(sample)
        };
        [
            "rialto_flow_table_bytes",
            "rialto_flow_table_resident_bytes",
            "rialto_flow_table_huge_page_bytes",
        ]
        .map(of_slots)
    };
    let [bytes, resident, in_huge] = slots(huge.dir.join("state").to_str().unwrap());
    // The default table: 2^18 slots of 48 bytes.
    assert_eq!(bytes, (48 << 18) as f64);
    assert!(
        in_huge > 0.0 && in_huge == resident,
        "on a huge tmpfs: {in_huge} of {resident} resident bytes in 2 MB pages"
    );
    let dev_shm = rialto_testbed::state_dir(&pair.node_ns);
    let [_, resident, in_huge] = slots(dev_shm.to_str().unwrap());
    assert!(
        resident > 0.0 && in_huge == 0.0,
        "on /dev/shm: {in_huge} of {resident} resident bytes in 2 MB pages"
    );
}

/// A thread of the control plane that panics (here the health checker,
/// fault injected) stops Rialto with exit status 1, so that a restart
/// (systemd's `Restart=on-failure`) runs it again and the flows resume,
/// rather than serving on with the backends' health frozen.
#[test]
fn a_control_thread_that_panics_stops_rialto_with_a_failure() {
    let pair = Pair::up(1);
    gateways(&pair);
    let mac = mac_of(&pair.peer_ns, &pair.peer_if);
    let path = std::env::temp_dir().join(format!("rialto-control-{}.toml", std::process::id()));
    std::fs::write(&path, config(&mac, &web(POD_A))).unwrap();
    let rialto = serve(&pair, &path, &["--inject-fault", "checker-panic"]);
    std::fs::remove_file(&path).unwrap();
    let line = rialto.wait_for_log(
        "a thread of the control plane stopped",
        Duration::from_secs(5),
    );
    assert!(line.contains("health checker"), "{line}");
    let (status, summary) = rialto.wait_exit();
    assert_eq!(status.code(), Some(1), "{summary}");
}

/// A state directory whose filesystem has no room for the flow tables is
/// refused at start, with the room there is and the room they take
/// (rather than a SIGBUS mid-traffic once the tables fill).
#[test]
fn a_state_directory_without_room_for_the_tables_is_refused_at_start() {
    let pair = Pair::up(1);
    let mac = mac_of(&pair.peer_ns, &pair.peer_if);
    let small = rialto_testbed::Tmpfs::mount("size=4m,mode=0700");
    let path = small.dir.join("rialto.toml");
    std::fs::write(&path, config(&mac, &web(POD_A))).unwrap();
    let mut cmd = rialto_testbed::netns_command(&pair.node_ns, BIN);
    cmd.arg("run")
        .args(["--iface", &pair.node_if, "--config"])
        .arg(&path)
        .arg("--state-dir")
        .arg(small.dir.join("state"));
    let out = rialto_testbed::output_within(&mut cmd, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("refused at start: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The default table: 2^18 slots of 48 bytes, and a page of header.
    assert!(
        stderr.contains("MiB free, and the flow tables take 13 MiB (1 × 262144 slots)"),
        "{stderr}"
    );
}
