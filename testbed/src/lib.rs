//! Fixtures for Rialto's privileged tests.
//!
//! The namespaces are built by the same scripts operators use (`testbed/*.sh`)
//! and removed when the fixture is dropped, also when the test panics. A test
//! that cannot run here (not root) fails with a message saying so: it never
//! passes without having run.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

mod rialto;
pub use rialto::{Rialto, workers_total};

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

/// Runs a testbed script; panics with its output if it fails.
fn script(name: &str, args: &[&str]) {
    let path = workspace_root().join("testbed").join(name);
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
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
        script("pair.sh", &["down", &self.name]);
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

    /// The Rialto config `topology.sh config` writes for it.
    pub fn config(&self) -> String {
        let out = Command::new("bash")
            .arg(workspace_root().join("testbed/topology.sh"))
            .args(["config", &self.name])
            .output()
            .expect("topology.sh runs");
        assert!(out.status.success(), "topology.sh config failed");
        String::from_utf8(out.stdout).expect("the config is text")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        script("topology.sh", &["down", &self.name]);
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
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip -n {ns} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `addr` answers three pings from inside `ns`.
pub fn pings(ns: &str, addr: IpAddr) -> bool {
    netns_command(ns, "ping")
        .args(["-c", "3", "-i", "0.2", "-W", "1", &addr.to_string()])
        .output()
        .expect("ping runs")
        .status
        .success()
}
