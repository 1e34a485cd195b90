//! Announcing the VIPs over BGP, only while this Rialto serves.
//!
//! Rialto starts a BGP speaker of its own, BIRD 2 (Debian's `bird2`), in
//! the foreground as its child, under `setpriv --pdeathsig KILL`: the
//! speaker dies with Rialto whatever ends it (`kill -9` included), its
//! sessions close, and the router withdraws this node's routes at once; BFD
//! with each neighbor (100 ms × 3) covers a node that goes silent. Rialto
//! writes the speaker's config (`bird.conf` in the state directory: a
//! static route per VIP, exported to each neighbor) and has it re-read it
//! (`birdc configure`) when what to announce changes: a reload that adds
//! or removes a VIP, workers that stop or start making progress again, a
//! drain.
//!
//! Operators with their own BGP daemon leave `[bgp]` out and use what this
//! module writes for BIRD as the contract instead: `GET /api/v1/announce`
//! answers 200 with the prefixes to announce while this node should be
//! announced, 503 otherwise (why, in the body).

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rialto::stats::WorkerStats;
use rialto_tables::{Bgp, Snapshot};
use serde::Serialize;
use tracing::{info, warn};

/// Whether this node is announced, and why (not).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Announcement {
    /// The prefixes this node wants announced while it serves (its VIPs).
    pub prefixes: Vec<String>,
    /// Whether they are exported to the neighbors now.
    pub announced: bool,
    /// `serving`, or why not: `starting`, `syncing`, `workers stalled`, `draining`,
    /// `stopping`.
    pub why: &'static str,
    /// Times this node was announced or withdrawn since it started.
    pub transitions: u64,
}

/// The announcement as the API reads it.
pub type Shared = Arc<Mutex<Announcement>>;

/// Decides whether this node is announced, and has its speaker (if any)
/// do it.
#[derive(Debug)]
pub struct Announcer {
    shared: Shared,
    bird: Option<Bird>,
    /// Per worker, its turns when last seen moving, and when.
    progress: Vec<(u64, Instant)>,
}

/// How long `birdc` may take.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);

/// A worker whose loop has not turned for this long has stopped making
/// progress (an idle worker turns every 100 ms).
const STALLED: Duration = Duration::from_millis(400);

impl Announcer {
    /// With a speaker for `bgp` (if any), its files in `dir`; nothing is
    /// announced until [`Self::follow`] says so.
    pub fn new(bgp: Option<&Bgp>, dir: &Path) -> Result<Self> {
        Ok(Self {
            shared: Arc::new(Mutex::new(Announcement {
                why: "starting",
                ..Announcement::default()
            })),
            bird: bgp.map(|bgp| Bird::start(bgp, dir)).transpose()?,
            progress: Vec::new(),
        })
    }

    pub fn shared(&self) -> Shared {
        Arc::clone(&self.shared)
    }

    /// Announces `tables`' VIPs while the workers are up and make
    /// progress, the node is not `draining` and, in a fleet, not `syncing`
    /// (it does not hold every peer's flows yet); withdraws them otherwise.
    /// Says so once per change.
    pub fn follow(
        &mut self,
        tables: &Snapshot,
        workers: &[Arc<WorkerStats>],
        draining: bool,
        syncing: bool,
    ) {
        let now = Instant::now();
        self.progress.resize(workers.len(), (u64::MAX, now));
        let (mut down, mut stalled) = (false, false);
        for (w, (turns, since)) in workers.iter().zip(&mut self.progress) {
            if !w.up() {
                // Panicked: its queue goes to the kernel, which does not
                // serve the VIPs; the fleet's other nodes hold its flows.
                down = true;
            } else if w.turns() != *turns {
                (*turns, *since) = (w.turns(), now);
            } else if now.duration_since(*since) > STALLED {
                stalled = true;
            }
        }
        let why = match (draining, down, stalled, syncing) {
            (true, ..) => "draining",
            (false, true, ..) => "workers down",
            (false, false, true, _) => "workers stalled",
            (false, false, false, true) => "syncing",
            (false, false, false, false) => "serving",
        };
        self.set(tables, why);
    }

    /// Withdraws everything: Rialto is stopping.
    pub fn stop(&mut self, tables: &Snapshot) {
        self.set(tables, "stopping");
        // BIRD closes its sessions (a BGP cease) as it stops.
        self.bird = None;
    }

    fn set(&mut self, tables: &Snapshot, why: &'static str) {
        let prefixes = prefixes(tables);
        let announce = why == "serving";
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shared.why == why && shared.prefixes == prefixes {
            return;
        }
        if let Some(bird) = &self.bird {
            let exported: &[String] = if announce { &prefixes } else { &[] };
            if let Err(e) = bird.configure(exported) {
                warn!("the BGP speaker did not take its new config: {e:#}");
                return;
            }
        }
        if shared.announced != announce {
            shared.transitions += 1;
            match announce {
                true => {
                    info!(prefixes = ?prefixes, "announced: the VIPs are exported to the router")
                }
                false => warn!(why, "withdrawn: the VIPs are no longer announced"),
            }
        }
        *shared = Announcement {
            prefixes,
            announced: announce,
            why,
            transitions: shared.transitions,
        };
    }
}

/// BIRD, running as this process's child.
#[derive(Debug)]
struct Bird {
    child: Child,
    bgp: Bgp,
    config: PathBuf,
    socket: PathBuf,
}

impl Bird {
    /// Starts BIRD for `bgp`, its files in `dir`, exporting nothing yet.
    fn start(bgp: &Bgp, dir: &Path) -> Result<Self> {
        let config = dir.join("bird.conf");
        let socket = dir.join("bird.ctl");
        std::fs::write(&config, bird_config(bgp, &[]))
            .with_context(|| format!("cannot write {}", config.display()))?;
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "bird", "-f", "-c"])
            .arg(&config)
            .arg("-s")
            .arg(&socket)
            .stdin(Stdio::null())
            .spawn()
            .context(
                "cannot start BIRD (setpriv from util-linux and bird from bird2: setup.sh \
                 installs them)",
            )?;
        let mut bird = Self {
            child,
            bgp: bgp.clone(),
            config,
            socket,
        };
        // Until its control socket answers, BIRD is not up.
        let started = Instant::now();
        while bird.birdc(&["show", "status"]).is_err() {
            if let Ok(Some(status)) = bird.child.try_wait() {
                bail!("BIRD exited at start ({status}): see its messages above");
            }
            if started.elapsed() > BIRDC_TIMEOUT {
                bail!("BIRD did not come up within {BIRDC_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        info!(pid = bird.child.id(), config = %bird.config.display(), "BGP speaker (BIRD) started");
        Ok(bird)
    }

    /// Exports `prefixes` (and nothing else) to the neighbors.
    fn configure(&self, prefixes: &[String]) -> Result<()> {
        std::fs::write(&self.config, bird_config(&self.bgp, prefixes))?;
        self.birdc(&["configure"]).map(drop)
    }

    fn birdc(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("birdc");
        cmd.arg("-s").arg(&self.socket).args(args);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run birdc")?;
        let out = wait_within(child, BIRDC_TIMEOUT)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.contains("Unable to connect") {
            bail!("birdc {}: {}", args.join(" "), text.trim());
        }
        Ok(text)
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if wait_within_child(&mut self.child, Duration::from_secs(2)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Waits for `child`, up to `timeout`; its exit status, or `None`.
fn wait_within_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child's output, once it has exited within `timeout` (killed if not).
fn wait_within(mut child: Child, timeout: Duration) -> Result<std::process::Output> {
    if wait_within_child(&mut child, timeout).is_none() {
        let _ = child.kill();
        bail!("birdc did not answer within {timeout:?}");
    }
    Ok(child.wait_with_output()?)
}

/// The host routes of `tables`' VIPs, one per address; with a fleet, also
/// this node's VTEP's, and the prefix that covers every node's VTEP (once
/// a node is withdrawn, its tunnel traffic goes to the others).
pub fn prefixes(tables: &Snapshot) -> Vec<String> {
    let mut addrs: Vec<IpAddr> = tables.vip_addrs.iter().copied().collect();
    addrs.sort();
    let fleet = tables.fleet.as_ref();
    let vtep = fleet.and(tables.node.vtep_v4).map(IpAddr::V4);
    (addrs.iter().chain(&vtep))
        .map(|a| match a {
            IpAddr::V4(_) => format!("{a}/32"),
            IpAddr::V6(_) => format!("{a}/128"),
        })
        .chain(fleet.map(|f| format!("{}/{}", f.vtep_prefix.0, f.vtep_prefix.1)))
        .collect()
}

/// BIRD's config: the prefixes as static routes, exported to each
/// neighbor of their family.
fn bird_config(bgp: &Bgp, exported: &[String]) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by rialto: what this node announces while it serves.\n\
         router id {};\n\
         log stderr {{ warning, error, fatal }};\n\
         protocol device {{ scan time 10; }}",
        bgp.router_id
    );
    for (name, family, v6) in [
        ("rialto_vips", "ipv4", false),
        ("rialto_vips6", "ipv6", true),
    ] {
        let _ = writeln!(c, "protocol static {name} {{\n    {family};");
        for p in exported.iter().filter(|p| p.contains(':') == v6) {
            let _ = writeln!(c, "    route {p} blackhole;");
        }
        let _ = writeln!(c, "}}");
    }
    if bgp.bfd {
        let _ = writeln!(
            c,
            "protocol bfd {{\n    interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};\n}}"
        );
    }
    for (i, (addr, asn)) in bgp.neighbors.iter().enumerate() {
        let (family, source) = match addr {
            IpAddr::V4(_) => ("ipv4", "rialto_vips"),
            IpAddr::V6(_) => ("ipv6", "rialto_vips6"),
        };
        let _ = writeln!(
            c,
            "protocol bgp neighbor{} {{\n    local as {};\n    neighbor {addr} as {asn};\n    \
             hold time 6;\n    keepalive time 2;\n    connect retry time 1;\n    \
             error wait time 1, 5;\n    bfd {};\n    {family} {{ import none; export where proto = \"{source}\"; }};\n}}",
            i + 1,
            bgp.asn,
            if bgp.bfd { "on" } else { "off" },
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_exports_each_family_to_its_neighbors() {
        let bgp = Bgp {
            asn: 65001,
            router_id: "198.18.1.1".parse().unwrap(),
            neighbors: vec![("198.18.1.254".parse().unwrap(), 65000)],
            bfd: true,
        };
        let c = bird_config(&bgp, &["198.18.100.1/32".into(), "fd00:100::1/128".into()]);
        for line in [
            "router id 198.18.1.1;",
            "    route 198.18.100.1/32 blackhole;",
            "    route fd00:100::1/128 blackhole;",
            "protocol bgp neighbor1 {",
            "    neighbor 198.18.1.254 as 65000;",
            "    bfd on;",
            "    ipv4 { import none; export where proto = \"rialto_vips\"; };",
        ] {
            assert!(c.lines().any(|l| l == line), "{line:?} in\n{c}");
        }
        assert!(!bird_config(&bgp, &[]).contains("route "));
    }
}
