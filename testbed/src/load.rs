//! Long-lived traffic that counts what breaks: TCP connections that each
//! echo a small message every few milliseconds, and a UDP stream of
//! numbered datagrams, from a client namespace through VIPs to echo
//! servers in the pods. What a restart, a take-over or a lost node must
//! not do shows up here: a connection reset, a connection stalled, a gap
//! in the stream.

use std::{
    fmt,
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// A TCP server in `ns` at `at` that echoes each connection until the
/// client shuts it down; it serves until the test process ends (the
/// namespace's removal closes it).
pub fn tcp_echo(ns: &str, at: SocketAddr) {
    let listener = crate::in_netns(ns, || TcpListener::bind(at))
        .unwrap_or_else(|e| panic!("cannot listen on {at} in {ns}: {e}"));
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let (mut rx, mut tx) = (&stream, &stream);
                let _ = std::io::copy(&mut rx, &mut tx);
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
}

/// A UDP server in `ns` at `at` that sends every datagram back.
pub fn udp_echo(ns: &str, at: SocketAddr) {
    let socket = crate::in_netns(ns, || UdpSocket::bind(at))
        .unwrap_or_else(|e| panic!("cannot bind {at}/UDP in {ns}: {e}"));
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
}

/// TCP and UDP echo servers in `ns` at `at`.
pub fn echo_servers(ns: &str, at: SocketAddr) {
    tcp_echo(ns, at);
    udp_echo(ns, at);
}

/// TCP and UDP echo on port 7 of the four pods of the cross-cluster
/// testbed (or a fleet), behind one VIP: add to its config, and start the
/// servers with [`echo_in_pods`].
pub const ECHO_SERVICES: &str = r#"
[[service]]
name = "echo"
vip = "198.18.100.4:7/TCP"
backends = [
    { cluster = "east", addr = "198.19.0.10:7" },
    { cluster = "east", addr = "198.19.0.11:7" },
    { cluster = "west", addr = "198.19.0.10:7" },
    { cluster = "west", addr = "198.19.0.11:7" },
]

[[service]]
name = "echo-udp"
vip = "198.18.100.4:7/UDP"
backends = [
    { cluster = "east", addr = "198.19.0.10:7" },
    { cluster = "east", addr = "198.19.0.11:7" },
    { cluster = "west", addr = "198.19.0.10:7" },
    { cluster = "west", addr = "198.19.0.11:7" },
]
"#;

/// The echo servers of [`ECHO_SERVICES`] in every pod; `ns` names a pod's
/// namespace (`east-p1`, ...).
pub fn echo_in_pods(ns: impl Fn(&str) -> String) {
    for cluster in ["east", "west"] {
        for (pod, addr) in [("p1", "198.19.0.10"), ("p2", "198.19.0.11")] {
            let at = format!("{addr}:7").parse().expect("an address");
            echo_servers(&ns(&format!("{cluster}-{pod}")), at);
        }
    }
}

/// What to send, from where, to where.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The client namespace.
    pub ns: String,
    /// The TCP echo service's VIP, and how many connections to keep open.
    pub tcp: SocketAddr,
    pub connections: usize,
    /// The UDP echo service's VIP.
    pub udp: Option<SocketAddr>,
    /// Client addresses to spread the connections over (connection `i`
    /// from `sources[i % len]`); empty: the kernel's choice.
    pub sources: Vec<IpAddr>,
}

/// Time between two round trips on a connection, and between two
/// datagrams of the stream.
const TCP_INTERVAL: Duration = Duration::from_millis(10);
const UDP_INTERVAL: Duration = Duration::from_millis(1);
/// How long a round trip may take before the connection counts as broken
/// (far beyond any stall the tests allow).
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Traffic running; [`Load::stop`] ends it and says what happened.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    tcp: Vec<JoinHandle<Connection>>,
    udp: Option<JoinHandle<Stream>>,
}

/// What happened to one TCP connection.
#[derive(Clone, Debug)]
pub struct Connection {
    pub from: Option<SocketAddr>,
    pub round_trips: u64,
    /// The longest time without a round trip completing.
    pub longest_stall: Duration,
    /// Why it ended early, if it did (reset, timed out, echo differs).
    pub broken: Option<String>,
}

/// What happened to the UDP stream.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    pub sent: u64,
    pub answered: u64,
    /// Each run of lost datagrams: when it began (since the load began)
    /// and how long it lasted, from the send times of the datagrams
    /// answered on either side of it.
    pub gaps: Vec<(Duration, Duration)>,
}

impl Stream {
    pub fn longest_gap(&self) -> Duration {
        self.gaps.iter().map(|g| g.1).max().unwrap_or_default()
    }

    pub fn lost(&self) -> u64 {
        self.sent - self.answered
    }
}

/// What a load saw, from start to stop.
#[derive(Clone, Debug)]
pub struct Report {
    pub connections: Vec<Connection>,
    pub stream: Option<Stream>,
}

impl Report {
    pub fn broken(&self) -> Vec<&Connection> {
        self.connections
            .iter()
            .filter(|c| c.broken.is_some())
            .collect()
    }

    /// Connections (not broken) that stalled longer than `bound`.
    pub fn stalled(&self, bound: Duration) -> Vec<&Connection> {
        self.connections
            .iter()
            .filter(|c| c.broken.is_none() && c.longest_stall > bound)
            .collect()
    }

    pub fn longest_stall(&self) -> Duration {
        (self.connections.iter())
            .map(|c| c.longest_stall)
            .max()
            .unwrap_or_default()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let round_trips: u64 = self.connections.iter().map(|c| c.round_trips).sum();
        writeln!(
            f,
            "TCP: {} connections, {} broken, {round_trips} round trips, longest stall {:?}",
            self.connections.len(),
            self.broken().len(),
            self.longest_stall()
        )?;
        for c in self.broken() {
            writeln!(
                f,
                "  broken: from {:?}: {}",
                c.from,
                c.broken.as_deref().unwrap_or("")
            )?;
        }
        if let Some(s) = &self.stream {
            write!(
                f,
                "UDP: {} sent, {} answered, {} lost, longest gap {:?}; gaps (at, length):",
                s.sent,
                s.answered,
                s.lost(),
                s.longest_gap()
            )?;
            for (at, length) in &s.gaps {
                write!(f, " ({at:.3?}, {length:.3?})")?;
            }
        }
        Ok(())
    }
}

impl Load {
    /// Opens the connections (panics if one cannot be opened: the load
    /// starts on a working path) and starts the stream.
    pub fn start(spec: &LoadSpec) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tcp = Vec::with_capacity(spec.connections);
        for i in 0..spec.connections {
            let source = (!spec.sources.is_empty()).then(|| spec.sources[i % spec.sources.len()]);
            let stream = crate::in_netns(&spec.ns, || open(source, spec.tcp))
                .unwrap_or_else(|e| panic!("connection {i} to {} from {source:?}: {e}", spec.tcp));
            let stop = Arc::clone(&stop);
            tcp.push(std::thread::spawn(move || {
                echo_until(stream, i as u64, &stop)
            }));
        }
        let udp = spec.udp.map(|vip| {
            let socket =
                crate::in_netns(&spec.ns, || UdpSocket::bind("0.0.0.0:0")).expect("a UDP socket");
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || stream(socket, vip, started, &stop))
        });
        Self {
            stop,
            started,
            tcp,
            udp,
        }
    }

    /// Since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops sending, waits for the last answers, and reports.
    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        Report {
            connections: (self.tcp.into_iter())
                .map(|t| t.join().expect("a connection's thread does not panic"))
                .collect(),
            stream: self
                .udp
                .map(|u| u.join().expect("the stream's thread does not panic")),
        }
    }
}

/// A TCP connection to `to`, from `source` if given, within `timeout`.
pub(crate) fn connect(
    source: Option<SocketAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    if let Some(from) = source {
        socket.bind(&from.into())?;
    }
    socket.connect_timeout(&to.into(), timeout)?;
    Ok(TcpStream::from(socket))
}

/// A connection of the load: timeouts far beyond any stall allowed.
fn open(source: Option<IpAddr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = connect(
        source.map(|a| SocketAddr::new(a, 0)),
        to,
        Duration::from_secs(5),
    )?;
    stream.set_read_timeout(Some(ROUND_TRIP_TIMEOUT))?;
    stream.set_write_timeout(Some(ROUND_TRIP_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Round trips on `stream` until `stop`: each a 16-byte message (the
/// connection's number, the round trip's) that must come back as sent.
fn echo_until(mut stream: TcpStream, id: u64, stop: &AtomicBool) -> Connection {
    let mut report = Connection {
        from: stream.local_addr().ok(),
        round_trips: 0,
        longest_stall: Duration::ZERO,
        broken: None,
    };
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut message = [0u8; 16];
        message[..8].copy_from_slice(&id.to_be_bytes());
        message[8..].copy_from_slice(&report.round_trips.to_be_bytes());
        let mut back = [0u8; 16];
        let outcome = stream
            .write_all(&message)
            .and_then(|()| stream.read_exact(&mut back));
        if let Err(e) = outcome {
            report.broken = Some(format!("after {} round trips: {e}", report.round_trips));
            break;
        }
        if back != message {
            report.broken = Some(format!(
                "round trip {}: the echo differs",
                report.round_trips
            ));
            break;
        }
        report.round_trips += 1;
        report.longest_stall = report.longest_stall.max(last.elapsed());
        last = Instant::now();
        std::thread::sleep(TCP_INTERVAL);
    }
    let _ = stream.shutdown(Shutdown::Both);
    report
}

/// Numbered datagrams to `vip`, one per [`UDP_INTERVAL`], until `stop`;
/// each answer marks its number. Then the gaps in the answers.
fn stream(socket: UdpSocket, vip: SocketAddr, started: Instant, stop: &AtomicBool) -> Stream {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("a read timeout");
    let receiver = socket.try_clone().expect("the socket, for the receiver");
    let receiving = Arc::new(AtomicBool::new(true));
    let still = Arc::clone(&receiving);
    let answers = std::thread::spawn(move || {
        let mut answered = Vec::new();
        let mut buf = [0u8; 64];
        while still.load(Ordering::Relaxed) {
            if let Ok((8, _)) = receiver.recv_from(&mut buf) {
                let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                answered.push(seq);
            }
        }
        answered
    });
    let mut sent_at = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let seq = sent_at.len() as u64;
        // On schedule: a late wake-up is made up for, not carried on.
        let due = UDP_INTERVAL * seq as u32;
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let _ = socket.send_to(&seq.to_be_bytes(), vip);
        sent_at.push(started.elapsed());
    }
    // The last answers' way back.
    std::thread::sleep(Duration::from_millis(200));
    receiving.store(false, Ordering::Relaxed);
    let mut answered = answers.join().expect("the receiver does not panic");
    answered.sort_unstable();
    answered.dedup();
    answered.retain(|&s| (s as usize) < sent_at.len());
    let mut report = Stream {
        sent: sent_at.len() as u64,
        answered: answered.len() as u64,
        gaps: Vec::new(),
    };
    // A gap between two answered datagrams, or before the first or after
    // the last (from the stream's start or to its end).
    let mut previous: Option<u64> = None;
    for &seq in answered
        .iter()
        .chain(std::iter::once(&(sent_at.len() as u64)))
    {
        let lost_from = previous.map_or(0, |p| p + 1);
        if seq > lost_from {
            let from = previous.map_or(Duration::ZERO, |p| sent_at[p as usize]);
            let to = sent_at
                .get(seq as usize)
                .copied()
                .unwrap_or_else(|| *sent_at.last().expect("a datagram was sent"));
            report.gaps.push((from, to.saturating_sub(from)));
        }
        previous = Some(seq);
    }
    report
}
