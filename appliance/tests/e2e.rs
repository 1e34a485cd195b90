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
    NODE_V4, NODE_V6, Pair, Rialto, VIP_V4, VIP_V6, in_netns, ip, netns_command, pings,
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
        .output()
        .unwrap();
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
    let out = cmd.arg("run").args(args).output().unwrap();
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

    let first = start(&pair, &[]);
    let e = startup_error(&pair, &[], &["--mode", "reflect", "--iface", iface]);
    assert!(
        e.contains(&format!("an XDP program is already attached to {iface}")),
        "{e}"
    );
    let (status, _) = first.terminate();
    assert!(status.success());
}
