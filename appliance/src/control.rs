//! The control plane of `rialto run`: reloads, and what the operator API
//! reports. Nothing here runs on a worker.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use rialto::{
    afxdp::Ledger,
    health::{self, BackendHealth, Board},
    shm::{self, Backing},
    state::{NamesId, Resumed, StateDir},
    stats::{StatsSnapshot, WorkerStats},
    worker::{Published, SharedTables},
};
use rialto_dataplane::pipeline::SnatUse;
use rialto_rules::{Snapshot, Steering as SteeringRules, config::BackendState};
use serde::Serialize;
use tracing::{error, warn};
use xdp_redirect::{Counter, CounterReader, Steering};

use crate::fault::Fault;

/// How long a reload waits for every worker to take the new tables.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(2);

/// What the XDP program steers: what the flags name, and the config's
/// VIPs, tunnel peers and SNAT addresses.
pub fn steering_rules(flags: &SteeringRules, tables: Option<&Snapshot>) -> SteeringRules {
    let mut rules = flags.clone();
    if let Some(tables) = tables {
        let from_config = tables.steering();
        rules.vips.extend(from_config.vips);
        rules.tunnel_peers.extend(from_config.tunnel_peers);
        rules.snat_addrs.extend(from_config.snat_addrs);
        rules.vteps.extend(from_config.vteps);
        rules.vxlan_port = from_config.vxlan_port;
    }
    rules
}

/// The running appliance as the operator API reads it: nothing here waits
/// for a reload (the reload history behind its own lock is held only to be
/// copied), so a status or a scrape answers while a reload compiles.
#[derive(Clone, Debug)]
pub struct View {
    /// The config file, in balance mode.
    pub config: Option<PathBuf>,
    pub tables: Option<Arc<SharedTables>>,
    /// Per worker: its queue and its counters.
    pub workers: Vec<(u32, Arc<WorkerStats>)>,
    pub reloads: Arc<Mutex<Reloads>>,
    pub xdp: CounterReader,
    /// What became of the flows a previous Rialto left (balance mode).
    pub resumed: Option<Resumed>,
    /// What the health checks say (balance mode).
    pub health: Option<Arc<Board>>,
    /// Whether this node is announced, and why (not).
    pub announcement: crate::announce::Shared,
    /// Set to drain: withdraw, serve what still arrives, then stop.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// What the fleet's syncer did, with a fleet.
    pub fleet: Option<Arc<Mutex<rialto::fleet::FleetStatus>>>,
}

/// The running appliance, as the control plane changes it: one reload at
/// a time, behind the lock this lives in.
#[derive(Debug)]
pub struct Control {
    /// What the API reads, which reloads keep up to date.
    pub view: View,
    /// Steering asked for on the command line, kept across reloads.
    pub flags: SteeringRules,
    /// What the XDP program's maps hold now.
    pub rules: SteeringRules,
    pub steering: Steering,
    /// Faults to make happen, for the tests (`--inject-fault`).
    pub faults: Vec<Fault>,
    /// Queues whose worker is down and whose socket left the XSKMAP.
    pub failed_open: Vec<u32>,
    /// What a reloaded config's tables may take.
    pub budget: rialto_rules::Budget,
    /// Where the flows and their contexts outlive the process (balance
    /// mode).
    pub state: Option<Arc<StateDir>>,
    /// What the health checks say, which every published table follows
    /// (balance mode).
    pub health: Option<Arc<Board>>,
}

/// Why a reload did not happen. In every case the running config stays in
/// force: nothing was changed, or whatever had changed was put back.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("nothing to reload: rialto runs without --config in balance mode")]
    NothingToReload,
    /// The config is invalid, or does not fit this host or the XDP maps.
    #[error("{0:#}")]
    Invalid(anyhow::Error),
    /// The config could not be read, or staged beside the file.
    #[error("{0:#}")]
    Io(anyhow::Error),
    /// Valid, but it could not be put in force (the workers did not take
    /// it in time, or the XDP maps refused an entry): rolled back.
    #[error("{0}; rolled back, the running config stays in force")]
    RolledBack(String),
}

impl ReloadError {
    /// The API's answer: `409` (nothing to reload), `422` (invalid), `500`
    /// (the file), `503` (rolled back).
    pub fn status(&self) -> u16 {
        match self {
            Self::NothingToReload => 409,
            Self::Invalid(_) => 422,
            Self::Io(_) => 500,
            Self::RolledBack(_) => 503,
        }
    }
}

/// Reloads so far.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reloads {
    pub ok: u64,
    /// Invalid configs: nothing was changed.
    pub rejected: u64,
    /// Reloads that could not read or stage their config, or had none:
    /// nothing was changed.
    pub failed: u64,
    /// Valid configs that could not be put in force (the workers did not
    /// take them in time, or the XDP maps refused an entry): whatever had
    /// changed was put back, and the running config stays.
    pub rolled_back: u64,
    /// The last one's outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<LastReload>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastReload {
    pub ok: bool,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The new generation, or why the config was rejected.
    pub message: String,
}

/// What `GET /api/v1/status` answers, and what `/metrics` is made of.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The config file, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Tables generation: 0 at start, higher after every reload that
    /// published tables (a rolled-back one publishes twice: its tables,
    /// then the running ones again).
    pub generation: u64,
    pub reloads: Reloads,
    pub xdp: BTreeMap<&'static str, Counter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Resumed>,
    /// Whether this node is announced (its VIPs exported over BGP, or
    /// what `/api/v1/announce` says), and why (not).
    pub announce: crate::announce::Announcement,
    pub draining: bool,
    /// The fleet's syncer: per peer, what it sent and received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<rialto::fleet::FleetStatus>,
    pub workers: Vec<WorkerStatus>,
}

#[derive(Debug, Serialize)]
pub struct WorkerStatus {
    pub queue: u32,
    /// The tables generation this worker runs on.
    pub generation: u64,
    #[serde(flatten)]
    pub stats: StatsSnapshot,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snat: Vec<SnatUse>,
    /// Where the worker's UMEM frames are (a quarter of a second old at most).
    pub umem: Option<Ledger>,
    /// What backs the worker's flow table, by part (`slots`, `indexes`):
    /// its bytes, those resident, and of those the ones in 2 MB pages
    /// (balance mode only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub flow_table: BTreeMap<&'static str, Backing>,
}

/// What backs each part of a flow table that lies in `parts`.
fn backing_by_part(
    maps: &procfs::process::MemoryMaps,
    parts: &[(&'static str, std::ops::Range<usize>)],
) -> BTreeMap<&'static str, Backing> {
    let mut by_part = BTreeMap::<_, Vec<_>>::new();
    for (part, range) in parts {
        by_part.entry(*part).or_default().push(range.clone());
    }
    by_part
        .into_iter()
        .map(|(part, ranges)| (part, shm::backing(maps, &ranges)))
        .collect()
}

/// What `GET /api/v1/services` answers: the services of the running config.
#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `ADDR:PORT/PROTO`.
    pub vip: String,
    /// Backends taking new flows (a Maglev table exists).
    pub serving: bool,
    /// A checksum (CRC-32) of the Maglev table: every node of a fleet
    /// with the same config and health has the same one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maglev_digest: Option<String>,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub cluster: String,
    pub addr: std::net::SocketAddr,
    pub weight: u32,
    pub state: &'static str,
    /// Maglev slots the backend holds: its share of new flows.
    pub slots: u64,
    /// Live flows to it, over all workers (as of their last report, at
    /// most a quarter of a second old).
    pub flows: u64,
    /// Whether new flows may go to it now: active, healthy, and in a
    /// preferred cluster while enough of those are healthy.
    pub selected: bool,
    /// What its checks say, once checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<BackendHealth>,
}

/// Where a reload's config comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// The config file, read again.
    File,
    /// This text, sent to the API: once it is in force, it replaces the
    /// config file (written beside it and renamed over it), so a restart
    /// or a SIGHUP runs it too.
    Text(&'a str),
}

impl Control {
    /// Reads the config again and, if it is valid, swaps it in: the XDP
    /// program stops steering what the new config no longer owns, the
    /// workers take the new tables (keeping their live flows), then the
    /// XDP program steers what is new. An invalid config changes nothing;
    /// one that cannot be put in force is rolled back.
    pub fn reload(&mut self, source: Source<'_>) -> Result<u64, ReloadError> {
        let outcome = self.try_reload(source);
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (ok, message) = match &outcome {
            Ok(generation) => (true, format!("generation {generation}")),
            Err(e) => (false, e.to_string()),
        };
        let mut reloads = self.view.reloads();
        match &outcome {
            Ok(_) => reloads.ok += 1,
            Err(ReloadError::Invalid(_)) => reloads.rejected += 1,
            Err(ReloadError::RolledBack(_)) => reloads.rolled_back += 1,
            Err(ReloadError::NothingToReload | ReloadError::Io(_)) => reloads.failed += 1,
        }
        reloads.last = Some(LastReload { ok, at, message });
        outcome
    }

    fn try_reload(&mut self, source: Source<'_>) -> Result<u64, ReloadError> {
        let (Some(path), Some(shared)) = (&self.view.config, &self.view.tables) else {
            return Err(ReloadError::NothingToReload);
        };
        let (path, shared) = (path.clone(), Arc::clone(shared));
        let name = path.display().to_string();
        let text = match source {
            Source::File => std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {name}"))
                .map_err(ReloadError::Io)?,
            Source::Text(text) => text.to_owned(),
        };
        let tables = rialto_rules::load_for(&name, &text, &self.budget)
            .map_err(|e| ReloadError::Invalid(e.into()))?;
        let in_force = shared.current();
        if tables.fleet != in_force.fleet {
            // The syncer's socket, key and peers are set at start: a reload
            // would put the new peers in the XDP maps and not in the syncer.
            return Err(ReloadError::Invalid(anyhow::anyhow!(
                "{name}: [fleet] differs from the one in force (node, listen, key or peers): it \
                 takes effect at the next start (restart this node: its peers carry its \
                 connections meanwhile)"
            )));
        }
        if tables.bgp != in_force.bgp {
            warn!("{name}: [bgp] changed: it takes effect at the next start");
        }
        // The new tables take the backends' health as the checks know it.
        let tables = match &self.health {
            Some(board) => (tables.with_health(&board.healthy(&tables)))
                .map_err(|e| ReloadError::Invalid(e.into()))?,
            None => tables,
        };
        let rules = steering_rules(&self.flags, Some(&tables));
        rialto::host::check_own_addresses(&rules, Some(&tables)).map_err(ReloadError::Invalid)?;
        self.steering
            .check_fits(&rules)
            .map_err(|e| ReloadError::Invalid(e.into()))?;
        // A config sent to the API goes beside the file first: if it cannot
        // be written, nothing has changed.
        let pending = match source {
            Source::File => None,
            Source::Text(text) => Some(Pending::write(&path, text).map_err(ReloadError::Io)?),
        };
        // What the flows' indices will mean, saved before any flow refers
        // to it, so that a restart at any point finds it.
        let names = match &self.state {
            Some(state) => state.save_names(&tables).map_err(ReloadError::Io)?,
            None => NamesId::default(),
        };
        let (added, removed) = self.rules.diff(&rules);
        let running = shared.published();
        // All or nothing: each step undoes the ones before it if it fails.
        if let Err(e) = self.steering.remove(&removed) {
            self.restore_steering(&removed, None);
            self.keep_names(running.names);
            return Err(ReloadError::RolledBack(format!(
                "the XDP maps refused a removal: {e}"
            )));
        }
        let generation = shared.publish(Arc::new(tables), names);
        if let Err(e) = self.await_workers(generation) {
            self.restore_tables(&shared, &running);
            self.restore_steering(&removed, None);
            return Err(ReloadError::RolledBack(e));
        }
        if let Err(e) = self.add_steering(&added) {
            self.restore_tables(&shared, &running);
            self.restore_steering(&removed, Some(&added));
            return Err(ReloadError::RolledBack(format!(
                "the XDP maps refused an entry: {e:#}"
            )));
        }
        self.keep_names(names);
        self.rules = rules;
        if let Some(pending) = pending
            && let Err(e) = pending.replace(&path)
        {
            // In force all the same: only a restart would miss it.
            error!("the new config is in force, but a restart would not run it: {e:#}");
        }
        Ok(generation)
    }

    /// Puts the backends' health, as the checks now say, in force: the
    /// services whose choice of backends changed get new Maglev tables
    /// (built here, off the hot path), published as a reload's are; live
    /// flows keep their backends. Returns the generation, if anything
    /// changed.
    pub fn apply_health(&mut self) -> Result<Option<u64>, String> {
        let (Some(board), Some(shared)) = (&self.health, &self.view.tables) else {
            return Ok(None);
        };
        let running = shared.published();
        let healthy = board.healthy(&running.tables);
        let next = (running.tables.with_health(&healthy)).map_err(|e| e.to_string())?;
        let changed = (next.services.iter().zip(&running.tables.services))
            .any(|(n, r)| n.selected != r.selected);
        if !changed {
            return Ok(None);
        }
        let generation = shared.publish(Arc::new(next), running.names);
        self.await_workers(generation)?;
        Ok(Some(generation))
    }

    /// Waits for every worker still serving to run on tables `generation`.
    fn await_workers(&self, generation: u64) -> Result<(), String> {
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        let stall = self.faults.contains(&Fault::ReloadStall);
        while stall
            || self
                .view
                .workers
                .iter()
                .any(|(_, w)| w.up() && w.generation() < generation)
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "the workers did not take the new tables within {RELOAD_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn add_steering(&mut self, added: &SteeringRules) -> Result<()> {
        if self.faults.contains(&Fault::MapUpdate) {
            let first = SteeringRules {
                vips: added.vips.iter().take(1).copied().collect(),
                tunnel_peers: Vec::new(),
                snat_addrs: Vec::new(),
                vteps: Vec::new(),
                ..added.clone()
            };
            self.steering.apply(&first)?;
            bail!("fault injected: the second new entry is refused");
        }
        Ok(self.steering.apply(added)?)
    }

    /// Puts the running tables back in force after a failed reload. The
    /// names of the failed one stay saved: a worker late to roll back may
    /// still hold slots packed under them (the next reload, which every
    /// worker takes, or a restart removes them).
    fn restore_tables(&self, shared: &SharedTables, running: &Published) {
        let generation = shared.publish(Arc::clone(&running.tables), running.names);
        if let Err(e) = self.await_workers(generation) {
            warn!("rolling a reload back: {e}");
        }
    }

    /// Only the saved names `names` are referred to from now on.
    fn keep_names(&self, names: NamesId) {
        if let Some(state) = &self.state {
            state.retain_names(names);
        }
    }

    /// Puts steering back as the running config has it: `removed` entries
    /// in again, and `added` ones (if any went in) out.
    fn restore_steering(&mut self, removed: &SteeringRules, added: Option<&SteeringRules>) {
        if let Some(added) = added
            && let Err(e) = self.steering.remove(added)
        {
            error!("rolling a reload back, cannot take its entries out of the XDP maps: {e}");
        }
        if let Err(e) = self.steering.apply(removed) {
            error!("rolling a reload back, cannot put the running entries back: {e}");
        }
    }

    /// Takes the socket of every worker that stopped serving (it panicked)
    /// out of the XSKMAP, so the kernel gets its queue's frames: fail open.
    pub fn fail_open_stopped_workers(&mut self) {
        for (queue, w) in &self.view.workers {
            if !w.up() && !self.failed_open.contains(queue) {
                // Tried again at the next turn until the socket is out.
                match self.steering.unregister_socket(*queue) {
                    Ok(()) => {
                        error!(queue, "worker down: its queue now goes to the kernel");
                        self.failed_open.push(*queue);
                    }
                    Err(e) => error!(queue, "worker down, cannot take its socket out: {e}"),
                }
            }
        }
    }
}

/// A config sent to the API, written beside the config file until it is
/// in force; removed if it never is.
struct Pending(PathBuf);

impl Pending {
    fn write(path: &Path, text: &str) -> Result<Self> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".next");
        let pending = Self(path.with_file_name(name));
        std::fs::write(&pending.0, text)
            .with_context(|| format!("cannot write {}", pending.0.display()))?;
        Ok(pending)
    }

    /// Renames it over the config file (atomically: the file is the old
    /// config or the new one, never a mix).
    fn replace(self, path: &Path) -> Result<()> {
        std::fs::rename(&self.0, path)
            .with_context(|| format!("in force, but cannot replace {}", path.display()))
    }
}

impl Drop for Pending {
    /// Once renamed there is nothing left to remove.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl View {
    /// The reload history (a poisoned lock is still read).
    pub fn reloads(&self) -> std::sync::MutexGuard<'_, Reloads> {
        self.reloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn status(&self) -> Status {
        let xdp = match self.xdp.read() {
            Ok(counters) => counters.iter().map(|(r, c)| (r.name(), c)).collect(),
            Err(_) => BTreeMap::new(),
        };
        // Read once for every worker's flow table.
        let maps = shm::mappings();
        Status {
            config: self.config.as_ref().map(|p| p.display().to_string()),
            generation: self.tables.as_ref().map_or(0, |t| t.generation()),
            reloads: self.reloads().clone(),
            xdp,
            resumed: self.resumed,
            announce: self.announcement(),
            draining: self.draining.load(std::sync::atomic::Ordering::Relaxed),
            fleet: (self.fleet.as_ref())
                .map(|f| f.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            workers: self
                .workers
                .iter()
                .map(|(queue, w)| WorkerStatus {
                    queue: *queue,
                    generation: w.generation(),
                    stats: w.snapshot(),
                    snat: w.snat(),
                    umem: w.umem(),
                    flow_table: maps
                        .as_ref()
                        .map(|maps| backing_by_part(maps, &w.flow_table()))
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }

    pub fn announcement(&self) -> crate::announce::Announcement {
        self.announcement
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn services(&self) -> Vec<ServiceStatus> {
        let Some(shared) = &self.tables else {
            return Vec::new();
        };
        let published = shared.published();
        let (tables, generation) = (&published.tables, published.generation);
        let reports: Vec<_> = self
            .workers
            .iter()
            .filter_map(|(_, w)| w.per_backend(generation))
            .collect();
        let flows = |service: usize, backend: usize| -> u64 {
            reports
                .iter()
                .filter_map(|r| r.get(service)?.get(backend))
                .map(|&n| u64::from(n))
                .sum()
        };
        tables
            .services
            .iter()
            .enumerate()
            .map(|(service, s)| {
                let counts = s.table.as_ref().map_or(&[][..], |t| t.slot_counts());
                ServiceStatus {
                    name: s.name.clone(),
                    vip: s.vip.to_string(),
                    serving: s.table.is_some(),
                    maglev_digest: s.table.as_ref().map(|t| {
                        let bytes: Vec<u8> =
                            t.slots().iter().flat_map(|v| v.to_le_bytes()).collect();
                        format!("{:08x}", crc32fast::hash(&bytes))
                    }),
                    backends: s
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(i, b)| BackendStatus {
                            cluster: tables.clusters[usize::from(b.cluster)].name.clone(),
                            addr: b.addr,
                            weight: b.weight,
                            state: match b.state {
                                BackendState::Active => "active",
                                BackendState::Draining => "draining",
                            },
                            slots: counts.get(i).copied().map_or(0, u64::from),
                            flows: flows(service, i),
                            selected: s.selected.get(i).copied().unwrap_or(false),
                            health: (self.health.as_ref())
                                .and_then(|h| h.of(&health::key(tables, &s.name, b))),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
