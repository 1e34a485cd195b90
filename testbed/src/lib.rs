//! Fixtures for Rialto's privileged tests.
//!
//! The namespaces are built by the same scripts operators use (`testbed/*.sh`)
//! and removed when the fixture is dropped, also when the test panics. A test
//! that cannot run here (not root) fails with a message saying so: it never
//! passes without having run.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

mod load;
mod rialto;
pub use load::{
    Connection, ECHO_SERVICES, Load, LoadSpec, Report, Stream, echo_in_pods, echo_servers,
    tcp_echo, udp_echo,
};
pub use rialto::{Rialto, state_dir, workers_total};

/// The node's address on the pair's link.
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// The peer's address on the pair's link.
pub const PEER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const PEER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// Addresses the peer routes via the node: service VIPs and the SNAT pool.
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
pub const SNAT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);

/// Holds the tests of one test binary to one at a time, for those whose
/// testbeds' timing (health checks, BGP) two loaded cores would disturb.
pub fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Panics with a clear message unless this process may build a testbed.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds network namespaces and attaches XDP programs: run it as root \
         (the README's test command does)"
    );
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testbed/ sits in the workspace")
        .to_path_buf()
}

/// The `rialto` binary of this build, for tests of other packages than
/// `rialto` (which have `CARGO_BIN_EXE_rialto`): it sits beside the test
/// executable's `deps/` directory.
pub fn rialto_bin() -> String {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("rialto"))
        .expect("the test runs from target/PROFILE/deps");
    assert!(
        bin.is_file(),
        "{} is not built: run the tests with `cargo test --workspace` (test.sh does), \
         which builds it",
        bin.display()
    );
    bin.display().to_string()
}

/// A name no other fixture of any test process uses at the same time.
fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("rt{}x{n}", std::process::id())
}

/// How long a testbed script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a testbed script; what went wrong, if it failed.
fn try_script(name: &str, args: &[&str]) -> Result<(), String> {
    let path = workspace_root().join("testbed").join(name);
    let mut cmd = Command::new("bash");
    cmd.arg(&path).args(args);
    let out = output_within(&mut cmd, SCRIPT_TIMEOUT)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {args:?} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs a testbed script; panics with its output if it fails.
pub fn script(name: &str, args: &[&str]) {
    if let Err(e) = try_script(name, args) {
        panic!("{e}");
    }
}

/// Tears a testbed down from a `Drop`: a failure is printed, never a panic
/// (which, while a failed test unwinds, would abort the whole binary).
fn teardown(name: &str, args: &[&str]) {
    if let Err(e) = try_script(name, args) {
        eprintln!("teardown: {e}");
    }
}

/// Runs `cmd` to completion, its output captured, within `timeout`; if it
/// is still running then, it is killed and the error says what it printed.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    wait_within(child, timeout).map_err(|(what, out)| {
        format!(
            "{cmd:?} {what}; it printed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The lines of `pipe` (a child's stderr, say) as they come, read on a
/// thread of their own.
pub fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Waits for a line containing `needle`, within one deadline however many
/// other lines come: the line, if it came; every other line seen
/// meanwhile goes to `seen`.
pub fn line_within(
    lines: &mpsc::Receiver<String>,
    needle: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(line) => seen.push(line),
            Err(_) => return None,
        }
    }
}

/// [`output_within`] for a command built in place: its output, or a panic
/// that says what it printed if it does not finish in time.
pub trait Within {
    fn output_by(&mut self, timeout: Duration) -> Output;
}

impl Within for Command {
    fn output_by(&mut self, timeout: Duration) -> Output {
        output_within(self, timeout).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// An HTTP client for the operator API whose every request has a deadline
/// (ureq sets none by default); answers of 4xx and 5xx are errors.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(HTTP_TIMEOUT))
        .build()
        .into()
}

/// `GET PATH` on the operator API of the Rialto in namespace `ns` (at its
/// default address): the body. Panics, naming the path, if it fails.
pub fn api_text(ns: &str, path: &str) -> String {
    in_netns(ns, || {
        http()
            .get(format!("http://127.0.0.1:9600{path}"))
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_else(|e| panic!("GET {path} in {ns}: {e}"))
    })
}

/// [`api_text`], parsed as JSON.
pub fn api_json(ns: &str, path: &str) -> serde_json::Value {
    let text = api_text(ns, path);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path} in {ns}: {e}: {text}"))
}

/// How long a request to the operator API may take, answer included.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// Waits for a child whose stdout and stderr are piped (or taken), within
/// `timeout`; kills it if it is still running then. Its output either way.
pub fn wait_within(mut child: Child, timeout: Duration) -> Result<Output, (String, Output)> {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                break Err(format!("did not finish within {timeout:?}"));
            }
            Err(e) => break Err(format!("cannot be waited for: {e}")),
        }
    };
    let status_or_killed = status
        .clone()
        .unwrap_or_else(|_| child.wait().unwrap_or_default());
    let out = Output {
        status: status_or_killed,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    match status {
        Ok(_) => Ok(out),
        Err(what) => Err((what, out)),
    }
}

/// Runs a testbed script's teardown when dropped, also when the test
/// fails: for tests that run the scripts themselves.
#[derive(Debug)]
pub struct Teardown {
    script: &'static str,
    args: Vec<String>,
}

impl Teardown {
    pub fn new(script: &'static str, args: &[&str]) -> Self {
        Self {
            script,
            args: args.iter().map(|&a| a.to_owned()).collect(),
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        teardown(self.script, &args);
    }
}

/// A tmpfs mounted with `options` on a directory of its own, unmounted
/// and removed when dropped, also when the test fails: as
/// `dev-shm-rialto.mount` mounts the state directories (`huge=`).
#[derive(Debug)]
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(options: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a tmpfs: run it as root (the README's test command does)"
        );
        let dir = std::env::temp_dir().join(unique_name());
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let tmpfs = Self { dir };
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "rialto-test"])
            .arg(&tmpfs.dir)
            .status()
            .expect("mount(8)");
        assert!(mounted.success(), "mount -t tmpfs -o {options}: {mounted}");
        tmpfs
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Two namespaces joined by a multi-queue veth pair (`testbed/pair.sh`).
#[derive(Debug)]
pub struct Pair {
    name: String,
    /// Where Rialto runs.
    pub node_ns: String,
    pub node_if: String,
    /// Where traffic comes from.
    pub peer_ns: String,
    pub peer_if: String,
}

impl Pair {
    /// Builds the pair with `queues` receive and transmit queues on each end.
    pub fn up(queues: u32) -> Self {
        require_root();
        let name = unique_name();
        let pair = Self {
            node_ns: format!("{name}-node"),
            node_if: format!("{name}n"),
            peer_ns: format!("{name}-peer"),
            peer_if: format!("{name}p"),
            name,
        };
        script("pair.sh", &["up", &pair.name, &queues.to_string()]);
        pair
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        teardown("pair.sh", &["down", &self.name]);
    }
}

/// The cross-cluster testbed (`testbed/topology.sh`): a router, a client,
/// the border node (`border`, uplink `up0`) and clusters `east` and `west`
/// behind kernel VXLAN gateways, two pods each on the same addresses.
#[derive(Debug)]
pub struct Topology {
    pub name: String,
}

impl Topology {
    /// Builds it with `queues` queues on the border node's uplink.
    pub fn up(queues: u32) -> Self {
        require_root();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // At most 8 characters.
        let name = format!("t{}x{n}", std::process::id() % 100_000);
        let topology = Self { name };
        script("topology.sh", &["up", &topology.name, &queues.to_string()]);
        topology
    }

    /// The namespace of `role`: `router`, `client`, `border`, `east`,
    /// `west`, `east-p1`, ...
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.name)
    }

    /// Stops (`false`) or starts (`true`) the HTTP server of `pod`
    /// (`east-p1`, ...), and waits until its port refuses connections, or
    /// accepts them.
    pub fn http(&self, pod: &str, serve: bool) {
        let action = if serve { "start" } else { "stop" };
        script("topology.sh", &["http", &self.name, pod, action]);
    }

    /// The Rialto config `topology.sh config` writes for it.
    pub fn config(&self) -> String {
        let mut cmd = Command::new("bash");
        cmd.arg(workspace_root().join("testbed/topology.sh"))
            .args(["config", &self.name]);
        let out = output_within(&mut cmd, SCRIPT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "topology.sh config failed");
        String::from_utf8(out.stdout).expect("the config is text")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        teardown("topology.sh", &["down", &self.name]);
    }
}

/// A fleet of border nodes behind a router that runs BGP
/// (`testbed/fleet.sh`): `node1` .. `nodeN`, the client (with addresses
/// 198.18.0.10 to .59), the clusters of [`Topology`].
#[derive(Debug)]
pub struct Fleet {
    pub name: String,
    pub nodes: u32,
}

impl Fleet {
    /// Builds it with `nodes` border nodes.
    pub fn up(nodes: u32) -> Self {
        require_root();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("f{}x{n}", std::process::id() % 100_000);
        let fleet = Self { name, nodes };
        script("fleet.sh", &["up", &fleet.name, &nodes.to_string()]);
        fleet
    }

    /// The namespace of `role`: `router`, `client`, `node1`, `east-p1`, ...
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.name)
    }

    /// Node `i`'s Rialto config (`fleet.sh config`).
    pub fn config(&self, i: u32) -> String {
        let mut cmd = Command::new("bash");
        cmd.arg(workspace_root().join("testbed/fleet.sh")).args([
            "config",
            &self.name,
            &i.to_string(),
        ]);
        let out = output_within(&mut cmd, SCRIPT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "fleet.sh config failed");
        String::from_utf8(out.stdout).expect("the config is text")
    }

    /// The next hops of the router's route to `vip` (the nodes' VTEPs).
    pub fn next_hops(&self, vip: &str) -> Vec<String> {
        let routes = ip(&self.ns("router"), &format!("route show {vip}"));
        routes
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_owned())
            .collect()
    }

    /// The client's addresses.
    pub fn clients() -> Vec<IpAddr> {
        (10..60)
            .map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, 0, i)))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        teardown("fleet.sh", &["down", &self.name]);
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets it
/// opens and interfaces it names are those of `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let handle = File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("no network namespace {ns}: {e}"));
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&handle, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot enter network namespace {ns}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `ip netns exec NS PROGRAM`: a command run inside `ns`.
pub fn netns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// `ip -n NS ARGS` (ARGS split on spaces); its output. Panics with `ip`'s
/// complaint if it fails.
pub fn ip(ns: &str, args: &str) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns]).args(args.split_whitespace());
    let out = output_within(&mut cmd, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "ip -n {ns} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One HTTP/1.0 GET of `/` from inside `ns` to `to`, within `timeout`:
/// the response's body, or why there is none (refused, reset, timed out).
pub fn http_get(ns: &str, to: SocketAddr, timeout: Duration) -> Result<String, std::io::Error> {
    http_get_from(ns, None, to, timeout)
}

/// [`http_get`] from `from` (port 0: the kernel's choice, which may be a
/// port a connection to the same place just closed: give one where each
/// connection must be new).
pub fn http_get_from(
    ns: &str,
    from: Option<SocketAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> Result<String, std::io::Error> {
    use std::io::{Read, Write};
    in_netns(ns, || {
        let mut stream = load::connect(from, to, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok(body.trim().to_owned())
    })
}

/// Whether `addr` answers three pings from inside `ns`.
pub fn pings(ns: &str, addr: IpAddr) -> bool {
    let mut ping = netns_command(ns, "ping");
    ping.args(["-c", "3", "-i", "0.2", "-W", "1", &addr.to_string()]);
    output_within(&mut ping, Duration::from_secs(10)).is_ok_and(|out| out.status.success())
}
