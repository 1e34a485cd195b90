//! The control plane of `rialto run`: reloads, and what the operator API
//! reports. Nothing here runs on a worker.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};
use rialto::{
    afxdp::Ledger,
    stats::{SnatUse, StatsSnapshot, WorkerStats},
    worker::SharedTables,
};
use rialto_rules::{Snapshot, Steering as SteeringRules, config::BackendState};
use serde::Serialize;
use xdp_redirect::{Counter, Steering};

use crate::run::load_config;

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
        rules.vxlan_port = from_config.vxlan_port;
    }
    rules
}

/// The running appliance, as the control plane sees and changes it.
#[derive(Debug)]
pub struct Control {
    /// The config file, in balance mode.
    pub config: Option<PathBuf>,
    /// Steering asked for on the command line, kept across reloads.
    pub flags: SteeringRules,
    /// What the XDP program's maps hold now.
    pub rules: SteeringRules,
    pub steering: Steering,
    pub tables: Option<Arc<SharedTables>>,
    /// Per worker: its queue and its counters.
    pub workers: Vec<(u32, Arc<WorkerStats>)>,
    pub reloads: Reloads,
}

/// Reloads so far.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reloads {
    pub ok: u64,
    pub rejected: u64,
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
    /// Tables generation: 0 at start, one more per reload.
    pub generation: u64,
    pub reloads: Reloads,
    pub xdp: BTreeMap<&'static str, Counter>,
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
}

/// What `GET /api/v1/services` answers: the services of the running config.
#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `ADDR:PORT/PROTO`.
    pub vip: String,
    /// Backends taking new flows (a Maglev table exists).
    pub serving: bool,
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
}

impl Control {
    /// Reads the config file again and, if it is valid, swaps it in: the
    /// XDP program stops steering what the new config no longer owns, the
    /// workers take the new tables (keeping their live flows), then the
    /// XDP program steers what is new. An invalid config changes nothing.
    pub fn reload(&mut self) -> Result<u64> {
        let outcome = self.try_reload();
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (ok, message) = match &outcome {
            Ok(generation) => (true, format!("generation {generation}")),
            Err(e) => (false, format!("{e:#}")),
        };
        if ok {
            self.reloads.ok += 1;
        } else {
            self.reloads.rejected += 1;
        }
        self.reloads.last = Some(LastReload { ok, at, message });
        outcome
    }

    fn try_reload(&mut self) -> Result<u64> {
        let (Some(path), Some(shared)) = (&self.config, &self.tables) else {
            bail!("nothing to reload: rialto runs without --config in balance mode");
        };
        let tables = load_config(path)?;
        let rules = steering_rules(&self.flags, Some(&tables));
        let (added, removed) = self.rules.diff(&rules);
        self.steering.remove(&removed)?;
        let generation = shared.publish(Arc::new(tables));
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        while self
            .workers
            .iter()
            .any(|(_, w)| w.generation() < generation)
        {
            if Instant::now() > deadline {
                bail!("workers did not take the new tables within {RELOAD_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.steering.apply(&added)?;
        self.rules = rules;
        Ok(generation)
    }

    pub fn status(&self) -> Status {
        let xdp = match self.steering.counters() {
            Ok(counters) => counters.iter().map(|(r, c)| (r.name(), c)).collect(),
            Err(_) => BTreeMap::new(),
        };
        Status {
            config: self.config.as_ref().map(|p| p.display().to_string()),
            generation: self.tables.as_ref().map_or(0, |t| t.generation()),
            reloads: self.reloads.clone(),
            xdp,
            workers: self
                .workers
                .iter()
                .map(|(queue, w)| WorkerStatus {
                    queue: *queue,
                    generation: w.generation(),
                    stats: w.snapshot(),
                    snat: w.snat(),
                    umem: w.umem(),
                })
                .collect(),
        }
    }

    pub fn services(&self) -> Vec<ServiceStatus> {
        let Some(shared) = &self.tables else {
            return Vec::new();
        };
        let tables = shared.current();
        let generation = shared.generation();
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
                let counts = s
                    .table
                    .as_ref()
                    .map(|t| t.slot_counts())
                    .unwrap_or_default();
                ServiceStatus {
                    name: s.name.clone(),
                    vip: s.vip.to_string(),
                    serving: s.table.is_some(),
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
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
