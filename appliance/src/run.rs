//! `rialto run`: attach, start a worker per queue, serve until signalled,
//! detach and report.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Barrier, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use rialto::{
    afxdp::{BindMode, Ledger, PortConfig, XskPort},
    fleet, health,
    host::{self, XdpMode, iface_mac, load_config, rx_queue_count},
    nexthop::NextHop,
    state::{
        MappedSlots, NamesId, Resumed, STATE_VERSION, STATE_VERSIONS_READ, StateDir, longest,
        resume,
    },
    stats::{StatsSnapshot, WorkerStats},
    worker::{SharedTables, Worker, WorkerFault, monotonic_ns},
};
use rialto_dataplane::{Pipeline, pipeline::balance::slots_for};
use rialto_rules::{Endpoint, Steering as SteeringRules, VXLAN_PORT};
use sd_notify::NotifyState;
use serde::Serialize;
use tracing::{debug, error, info, warn};
use xdp_redirect::{Counter, Steering};

use crate::{
    announce::Announcer,
    api::{Api, DEFAULT_API},
    control::{Control, Source, View, steering_rules},
    fault::Fault,
    imports::Imports,
    takeover::{self, Predecessor, Release},
};

/// The job a worker does on each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The border node's job: balance VIP traffic over backends in remote
    /// clusters, through VXLAN, with NAT and connection tracking.
    Balance,
    /// Swap Ethernet, IP and UDP/TCP source and destination, and send the
    /// frame back: the bare AF_XDP baseline the benchmarks compare against.
    Reflect,
}

/// Serve traffic on an interface until SIGINT or SIGTERM.
///
/// SIGHUP reloads --config: a valid config is swapped in without dropping
/// live flows (each keeps its backend while that backend is in the config,
/// draining or not); an invalid one is logged with its file, line and
/// reason, and the running config stays.
///
/// SIGUSR2 upgrades in place: the binary this Rialto was started from (a
/// newer one, once installed over it) is started with the same arguments
/// and --take-over, and takes over without breaking a connection.
///
/// On exit Rialto detaches its XDP program, leaving the interface as it was,
/// and prints a JSON summary on stdout: the XDP program's counters, and per
/// worker its packets, drops by reason and where its UMEM frames are.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The uplink interface; Rialto receives and transmits on it (one-armed).
    #[arg(long, value_name = "IF")]
    iface: String,

    /// Receive queues to serve, one worker each, comma-separated
    /// [default: every receive queue of IF].
    #[arg(long, value_name = "Q,...", value_delimiter = ',')]
    queues: Vec<u32>,

    /// CPU cores to pin the workers to, in the order of --queues
    /// [default: queue i on core i modulo the number of cores].
    #[arg(long, value_name = "CORE,...", value_delimiter = ',')]
    cores: Vec<usize>,

    /// The border node's config (TOML): services, backends, clusters, the
    /// SNAT pool. Its VIPs, tunnel peers and SNAT addresses are steered to
    /// Rialto, in addition to any given with the flags below.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// What the workers do with each frame (balance needs --config).
    #[arg(long, value_enum, default_value_t = Mode::Balance)]
    mode: Mode,

    /// How the XDP program is attached: in the driver, or on the generic skb path.
    #[arg(long, value_enum, default_value_t = XdpMode::Driver)]
    xdp_mode: XdpMode,

    /// A service VIP to steer to Rialto, as ADDR:PORT/PROTO
    /// (198.18.100.1:80/TCP, [fd00:100::1]:53/UDP); repeat for more.
    #[arg(long = "vip", value_name = "ADDR:PORT/PROTO")]
    vips: Vec<Endpoint>,

    /// A tunnel peer (a remote gateway's VTEP address): VXLAN from it to
    /// a --vtep is steered to Rialto; repeat for more.
    #[arg(long = "tunnel-peer", value_name = "ADDR")]
    tunnel_peers: Vec<IpAddr>,

    /// One of Rialto's VTEPs: VXLAN from a tunnel peer to it is steered to
    /// Rialto; repeat for more.
    #[arg(long = "vtep", value_name = "ADDR")]
    vteps: Vec<IpAddr>,

    /// One of Rialto's SNAT addresses: traffic to it is steered to Rialto;
    /// repeat for more.
    #[arg(long = "snat-addr", value_name = "ADDR")]
    snat_addrs: Vec<IpAddr>,

    /// UDP destination port of VXLAN.
    #[arg(long, default_value_t = VXLAN_PORT)]
    vxlan_port: u16,

    /// UMEM frames per queue (at least twice --ring-size).
    #[arg(long, default_value_t = PortConfig::default().frames)]
    frames: u32,

    /// Slots in each AF_XDP ring (fill, completion, RX, TX); a power of two.
    #[arg(long, default_value_t = PortConfig::default().ring_size)]
    ring_size: u32,

    /// Frames a worker takes from its RX ring at a time.
    #[arg(long, default_value_t = PortConfig::default().batch)]
    batch: usize,

    /// Frames each worker's inbox holds of what other workers hand it (a
    /// reply that arrived on their queue); beyond, dropped as handoff_full
    /// [default: --ring-size].
    #[arg(long, value_name = "FRAMES")]
    handoff_queue: Option<usize>,

    /// Microseconds a worker may leave another asleep with frames it
    /// handed it, so one wake brings several steps' frames (32 waiting
    /// wake it at once); 0: woken at once.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = PortConfig::default().wake_delay.as_micros() as u64)]
    handoff_wake_us: u64,

    /// Microseconds a worker lets frames gather after a step that took
    /// fewer than a batch, before its next: at a modest rate each step then
    /// takes several frames, for a fraction of the CPU per packet, each
    /// frame waiting up to that much longer (busy workers, their batches
    /// full, never wait); 0: the next step at once. At most 10,000.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(..=MAX_GATHER_US))]
    rx_gather_us: u64,

    /// Bind in copy mode without trying zero-copy first.
    #[arg(long)]
    copy: bool,

    /// Where the operator API listens: Prometheus metrics on /metrics, JSON
    /// on /api/v1/status and /api/v1/services, POST /api/v1/reload.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_API)]
    api: SocketAddr,

    /// Do not serve the operator API.
    #[arg(long, conflicts_with = "api")]
    no_api: bool,

    /// Log per-worker rates every SECONDS (0: only the summary at exit).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    stats_interval: u64,

    /// Where the flow tables live, so that a restart (after a crash too)
    /// resumes the flows: a directory on tmpfs [default:
    /// /dev/shm/rialto/IF.NETNS]. One Rialto at a time holds it.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// On SIGTERM, withdraw the VIPs first (BGP, or what /api/v1/announce
    /// says), serve what still arrives, and stop once no flow is left or
    /// after SECONDS; a second SIGTERM stops at once. Without it, SIGTERM
    /// stops at once. A drain asked through the API (`rialto drain`) lasts
    /// SECONDS at most too [default: 30].
    #[arg(long, value_name = "SECONDS")]
    drain_seconds: Option<u64>,

    /// Take over from the Rialto serving IF with this state directory (a
    /// planned upgrade: possibly a newer binary, the same arguments): once
    /// this one is ready, the running one lets go of the interface and
    /// exits, and this one resumes its flows. If the running one refuses,
    /// it serves on untouched and this one exits saying why.
    #[arg(long)]
    take_over: bool,

    /// For the tests only: make a fault happen (worker-panic:Q,
    /// worker-stall:Q, reload-stall, map-update, take-over-protocol).
    #[arg(long, value_name = "FAULT", hide = true)]
    inject_fault: Vec<Fault>,
}

/// What `rialto run` prints on stdout when it stops.
#[derive(Debug, Serialize)]
struct Summary {
    xdp: BTreeMap<&'static str, Counter>,
    /// What became of the flows a previous Rialto left (balance mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed: Option<Resumed>,
    workers: Vec<WorkerSummary>,
}

#[derive(Debug, Serialize)]
struct WorkerSummary {
    queue: u32,
    bind: BindMode,
    #[serde(flatten)]
    stats: StatsSnapshot,
    umem: Ledger,
    umem_balanced: bool,
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    takeover::note_exe();
    if nix::net::if_::if_nametoindex(args.iface.as_str()).is_err() {
        bail!("no such interface: {}", args.iface);
    }
    let available = rx_queue_count(&args.iface)?;
    let queues: Vec<u32> = if args.queues.is_empty() {
        (0..available).collect()
    } else {
        args.queues.clone()
    };
    if let Some(&q) = queues.iter().find(|&&q| q >= available) {
        bail!(
            "queue {q} is beyond {}'s {available} receive queue(s) (0..={})",
            args.iface,
            available.saturating_sub(1)
        );
    }
    if let Some((i, q)) = queues
        .iter()
        .enumerate()
        .find(|&(i, q)| queues[..i].contains(q))
        .map(|(i, &q)| (i, q))
    {
        bail!("--queues lists queue {q} twice (position {})", i + 1);
    }
    if !args.cores.is_empty() && args.cores.len() != queues.len() {
        bail!(
            "--cores names {} core(s) for {} queue(s)",
            args.cores.len(),
            queues.len()
        );
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let core_for = |i: usize| -> Option<core_affinity::CoreId> {
        match args.cores.get(i) {
            Some(&id) => Some(core_affinity::CoreId { id }),
            None => cores.get(i % cores.len().max(1)).copied(),
        }
    };

    let budget = host::budget(queues.len() as u32);
    let config = match &args.config {
        Some(path) => Some(Arc::new(load_config(path, &budget)?)),
        None if args.mode == Mode::Balance => {
            bail!("--mode balance needs --config FILE (or use --mode reflect)")
        }
        None => None,
    };
    let flags = SteeringRules {
        vips: args.vips.clone(),
        tunnel_peers: args.tunnel_peers.clone(),
        vteps: args.vteps.clone(),
        snat_addrs: args.snat_addrs.clone(),
        vxlan_port: args.vxlan_port,
    };
    let rules = steering_rules(&flags, config.as_deref());
    host::check_own_addresses(&rules, config.as_deref())?;
    // Balance mode keeps its flows where they outlive the process.
    let state_path = (args.state_dir.clone()).unwrap_or_else(|| StateDir::default_for(&args.iface));
    let predecessor = match (args.take_over, args.mode) {
        (false, _) => None,
        (true, Mode::Reflect) => {
            bail!("--take-over needs balance mode: the two Rialtos meet in the state directory")
        }
        (true, Mode::Balance) => {
            let protocol = match args.inject_fault.contains(&Fault::TakeOverProtocol) {
                true => takeover::PROTOCOL + 1000,
                false => takeover::PROTOCOL,
            };
            let predecessor = Predecessor::greet(&state_path, &STATE_VERSIONS_READ, protocol)?;
            info!(
                pid = predecessor.pid,
                "taking over: the running rialto agreed"
            );
            Some(predecessor)
        }
    };
    // Everything that needs neither the interface nor the state directory
    // is made ready first: a take-over asks for the release only then.
    let mut steering = Steering::load(&rules)?;
    // The ids of what the flows' table indices mean, known before it is
    // saved.
    let names = config
        .as_deref()
        .map(StateDir::names_id)
        .unwrap_or_default();
    let tables = config.map(|config| Arc::new(SharedTables::new(config, names)));
    let mac = iface_mac(&args.iface)?;
    let following = Arc::new(AtomicBool::new(false));
    let follower = match &tables {
        Some(tables)
            if args.mode == Mode::Balance && tables.current().node.next_hop_mac.is_none() =>
        {
            Some(learn_next_hop(&args.iface, tables, &following)?)
        }
        _ => None,
    };
    // A take-over stages the new flow tables while the running Rialto
    // still holds the state directory; otherwise it is locked first.
    let mut state = match args.mode {
        Mode::Balance => Some(StateDir::open(&state_path)?),
        Mode::Reflect => None,
    };
    if let (None, Some(state)) = (&predecessor, &mut state) {
        state.lock()?;
    }
    if let (Some(tables), Some(state)) = (&tables, &state) {
        state.check_room(queues.len(), slots_for(&tables.current()))?;
    }
    let mut pipelines = Vec::with_capacity(queues.len());
    for (i, &queue) in queues.iter().enumerate() {
        let pipeline = match (&tables, &state) {
            (Some(tables), Some(state)) => {
                let tables = tables.current();
                let slots = state.create_flows(queue, slots_for(&tables), names)?;
                Pipeline::balance_in(slots, tables, i as u32, queues.len() as u32, mac)
            }
            _ => Pipeline::Reflect,
        };
        if pipeline.snat_use().first().is_some_and(|s| s.slice == 0) {
            let (first, last) = tables.as_ref().map_or((0, 0), |t| t.current().snat.ports);
            warn!(
                queue,
                "no SNAT port for this worker: snat.ports {first}-{last} split over {} workers \
                 leaves it none, so it creates no flow",
                queues.len()
            );
        }
        pipelines.push(pipeline);
    }
    let port_config = PortConfig {
        frames: args.frames,
        ring_size: args.ring_size,
        batch: args.batch,
        inbox: args.handoff_queue.unwrap_or(0),
        wake_delay: Duration::from_micros(args.handoff_wake_us),
        gather: Duration::from_micros(args.rx_gather_us),
        zero_copy: !args.copy,
        ..PortConfig::default()
    };
    let umem = XskPort::prepare(&args.iface, &queues, &port_config)?;
    // From here until the workers serve, traffic goes to the kernel.
    let release = match predecessor {
        Some(predecessor) => {
            let released = predecessor.release()?;
            info!(
                pid = released.pid,
                flows = released.flows,
                millis = millis(released.asked),
                "the running rialto let go"
            );
            if let Some(state) = &mut state {
                state.lock()?;
            }
            Some(released)
        }
        None => None,
    };
    if let (Some(state), Some(tables)) = (&state, &tables) {
        state.save_names(&tables.current())?;
    }
    let state = state.map(Arc::new);
    // Where the predecessor had to bind in copy mode, so will this one.
    let umem = match release {
        Some(r) if !r.zero_copy => umem.copy_only(),
        _ => umem,
    };
    // Attached first: another XDP program on the interface (another Rialto)
    // is refused in so many words, not found out by a busy queue. Until the
    // sockets are in the XSKMAP, the traffic still goes to the kernel.
    steering.attach(&args.iface, args.xdp_mode.into())?;
    // The flows are resumed while the sockets are bound.
    let (resumed, ports) = std::thread::scope(|scope| -> Result<_> {
        let resuming = state.as_ref().zip(tables.as_ref()).map(|(state, tables)| {
            let (pipelines, queues) = (&mut pipelines, &queues);
            scope.spawn(move || resume_flows(state, &tables.current(), pipelines, queues, names))
        });
        let ports = umem.bind();
        let resumed = (resuming.map(|r| r.join().expect("resuming does not panic"))).transpose()?;
        Ok((resumed, ports?))
    })?;
    if let Some(r) = &release {
        debug!(
            millis = millis(r.asked),
            "take-over: flows resumed, AF_XDP sockets bound"
        );
    }
    let alarm = ports[0].alarm();
    let control_path = ports[0].control_path();
    // With a fleet, each worker's queues to and from the syncer.
    let fleet = (tables.as_ref())
        .and_then(|t| t.current().fleet.clone())
        .filter(|_| args.mode == Mode::Balance);
    let links = fleet.as_ref().map(|_| fleet::links(queues.len()));
    let mut workers = Vec::with_capacity(queues.len());
    for (i, ((&queue, port), pipeline)) in queues.iter().zip(ports).zip(pipelines).enumerate() {
        steering.register_socket(queue, port.raw_fd())?;
        let core = core_for(i);
        info!(queue, core = core.map(|c| c.id), bind = ?port.mode(), "AF_XDP socket bound");
        workers.push(Worker {
            queue,
            core,
            port,
            pipeline,
            stats: Arc::default(),
            tables: tables.clone().filter(|_| args.mode == Mode::Balance),
            fleet: links.as_ref().map(|l| l[i].clone()),
            fault: (args.inject_fault.iter()).find_map(|f| match *f {
                Fault::WorkerPanic(q) if q == queue => Some(WorkerFault::Panic),
                Fault::WorkerStall(q) if q == queue => Some(WorkerFault::Stall),
                _ => None,
            }),
        });
    }

    // Set by the control loop alone, once it decides to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let signals = Signals::install()?;
    let stopped = Arc::new(Barrier::new(workers.len()));
    let mut running = Vec::with_capacity(workers.len());
    for worker in workers {
        let (queue, bind, stats) = (worker.queue, worker.port.mode(), Arc::clone(&worker.stats));
        let handle = worker
            .spawn(Arc::clone(&stop), Arc::clone(&stopped))
            .context("cannot start a worker thread")?;
        running.push((queue, bind, stats, handle));
    }
    // The health checks go out through the workers, which now serve.
    let checking = Arc::new(AtomicBool::new(false));
    let (board, checker) = match &tables {
        Some(tables) if args.mode == Mode::Balance => {
            let (board, checker) = health::spawn(
                Arc::clone(tables),
                control_path,
                mac,
                Arc::clone(&checking),
                args.inject_fault.contains(&Fault::CheckerPanic),
            )
            .context("cannot start the health checker")?;
            (Some(board), Some(checker))
        }
        _ => (None, None),
    };
    // A node of a fleet behind BGP is reached at its VTEP through its own
    // announcement: its checks' failures count once one has passed.
    let hold = (board.as_ref())
        .filter(|_| fleet.is_some() && tables.as_ref().is_some_and(|t| t.current().bgp.is_some()));
    if let Some(board) = hold {
        board.hold.store(true, Ordering::Relaxed);
    }
    let hold = hold.cloned();
    // The fleet's peers hear of the flows from now on.
    let syncer = match (&fleet, links, &tables) {
        (Some(fleet), Some(links), Some(tables)) => {
            let syncer = fleet::spawn(fleet, Arc::clone(tables), links, alarm.clone())?;
            Some(syncer)
        }
        _ => None,
    };
    let mut resumed = resumed;
    if let (Some(r), Some(resumed)) = (&release, &mut resumed) {
        let gap = millis(r.asked);
        resumed.take_over_millis = Some(gap);
        info!(
            pid = r.pid,
            millis = gap,
            "took over: serving, this long after asking for the release"
        );
    }
    // Ready: a successor may now take over from this one.
    let (releases_to, releases) = mpsc::channel();
    if let Some(state) = &state {
        takeover::listen(state.path(), STATE_VERSION, releases_to)?;
    }

    let stats: Vec<_> = running
        .iter()
        .map(|(q, _, s, _)| (*q, Arc::clone(s)))
        .collect();
    // The VIPs are announced once the control loop sees the workers turn.
    let bgp = tables.as_ref().and_then(|t| t.current().bgp.clone());
    let announcer = Announcer::new(bgp.as_ref(), &state_path)?;
    let draining = Arc::new(AtomicBool::new(false));
    let current_tables = tables.clone();
    let view = View {
        health: board.clone(),
        announcement: announcer.shared(),
        draining: Arc::clone(&draining),
        config: args.config.clone().filter(|_| args.mode == Mode::Balance),
        tables,
        workers: stats.clone(),
        reloads: Arc::default(),
        xdp: steering.counter_reader(),
        resumed,
        fleet: syncer.as_ref().map(|s| Arc::clone(&s.status)),
    };
    let control = Arc::new(Mutex::new(Control {
        view: view.clone(),
        flags,
        rules,
        steering,
        faults: args.inject_fault.clone(),
        failed_open: Vec::new(),
        budget,
        state,
        health: board,
    }));
    let api = match args.no_api {
        true => None,
        false => match Api::start(args.api, view, Arc::clone(&control)) {
            Ok(api) => Some(api),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                Err(e).context("the workers are stopped")?
            }
        },
    };
    // Ready once the workers serve and the API answers.
    info!(iface = %args.iface, ?queues, mode = ?args.mode, xdp = ?args.xdp_mode, "rialto ready");
    // Under systemd (Type=notify), this process is the service from now on:
    // also when it took over from another, which exits.
    notify(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Ready,
        NotifyState::Status("serving"),
    ]);
    // A change to a file the config imports reloads it.
    let imports = match (&args.config, args.mode) {
        (Some(config), Mode::Balance) => {
            let mut imports = Imports::new()?;
            imports.follow(config);
            Some(imports)
        }
        _ => None,
    };
    let mut serving = Serve {
        signals: &signals,
        control: &control,
        interval: args.stats_interval,
        stats: &stats,
        releases: &releases,
        imports,
        announcer,
        draining,
        drain_for: Duration::from_secs(args.drain_seconds.unwrap_or(DRAIN_SECONDS)),
        term_drains: args.drain_seconds.is_some(),
        synced: syncer.as_ref().map(|s| Arc::clone(&s.synced)),
        hold,
        threads: vec![
            (
                "health checker",
                Box::new(|| checker.as_ref().is_some_and(|c| c.is_finished())),
            ),
            (
                "fleet syncer",
                Box::new(|| syncer.as_ref().is_some_and(fleet::Syncer::stopped)),
            ),
            (
                "next-hop follower",
                Box::new(|| follower.as_ref().is_some_and(|f| f.is_finished())),
            ),
        ],
    };
    let ended = serving.run();
    if let Some(tables) = &current_tables {
        serving.announcer.stop(&tables.current());
    }
    drop(serving);
    let failed = matches!(ended, Ended::Failed);
    let release = match ended {
        Ended::Released(release) => Some(release),
        Ended::Stopped | Ended::Drained | Ended::Failed => None,
    };
    checking.store(true, Ordering::Relaxed);
    if let Some(checker) = checker {
        let _ = checker.join();
    }
    stop.store(true, Ordering::Relaxed);
    alarm.ring();
    info!(take_over = release.is_some(), "stopping");
    if release.is_none() {
        notify(&[NotifyState::Stopping]);
    }
    let stopping = Instant::now();
    // While the workers drain and close their sockets, everything goes
    // to the kernel.
    match lock(&control).steering.detach() {
        Ok(()) => info!(iface = %args.iface, millis = millis(stopping), "XDP program detached"),
        Err(e) => error!("{e}"),
    }
    drop(api);

    let mut summary = Summary {
        xdp: BTreeMap::new(),
        resumed,
        workers: Vec::new(),
    };
    let mut balanced = true;
    for (queue, bind, stats, handle) in running {
        // A worker's panic in the pipeline is caught in the worker
        // (`Worker::run`); one anywhere else ends the worker here.
        let Ok(umem) = handle.join() else {
            error!(queue, "worker thread panicked while stopping");
            balanced = false;
            continue;
        };
        balanced &= umem.balanced();
        if !umem.balanced() {
            error!(queue, ?umem, "UMEM frames unaccounted for");
        }
        summary.workers.push(WorkerSummary {
            queue,
            bind,
            stats: stats.snapshot(),
            umem,
            umem_balanced: umem.balanced(),
        });
    }
    let control = sole(control);
    for (reason, counter) in control.steering.counters()?.iter() {
        summary.xdp.insert(reason.name(), counter);
    }
    drop(control); // unloads the XDP program, unlocks the state directory
    // Closes the fleet's sync socket, which a successor binds next.
    drop(syncer);
    debug!(millis = millis(stopping), "stopped");
    if let Some(release) = release {
        // Under systemd, the new Rialto is the service's main process
        // before this one exits: the manager would take this one's exit for
        // the service's, and stop the new one with it.
        notify(&[NotifyState::MainPid(release.successor)]);
        let flows = (summary.workers.iter())
            .filter_map(|w| w.stats.balance.map(|b| b.flows.live))
            .sum();
        let zero_copy = (summary.workers.iter()).all(|w| w.bind == BindMode::ZeroCopy);
        release.done(flows, zero_copy);
    }
    following.store(true, Ordering::Relaxed);
    if let Some(follower) = follower {
        let _ = follower.join();
    }
    println!("{}", serde_json::to_string(&summary)?);
    let all_up = summary.workers.iter().all(|w| w.stats.up);
    Ok(if balanced && all_up && !failed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads back the flows a previous Rialto left in `state`, restores them
/// into the workers' new tables (`pipelines`, of `queues`) under `tables`,
/// and puts the new tables in place of the old; says what became of them.
fn resume_flows(
    state: &StateDir,
    tables: &rialto_rules::Snapshot,
    pipelines: &mut [Pipeline<MappedSlots>],
    queues: &[u32],
    names: NamesId,
) -> Result<Resumed> {
    let started = Instant::now();
    let now = monotonic_ns();
    let saved = state.read_saved(longest(&tables.timeouts), (now / 1_000_000_000) as u32);
    for line in &saved.discarded {
        warn!("saved flows not trusted: {line}");
    }
    let mut pipelines: Vec<&mut Pipeline<MappedSlots>> = pipelines.iter_mut().collect();
    let mut resumed = resume(saved, tables, &mut pipelines, now);
    state.commit(queues)?;
    state.retain_names(names);
    resumed.millis = started.elapsed().as_millis() as u64;
    info!(
        recovered = resumed.recovered,
        expired = resumed.expired,
        gone = resumed.gone,
        no_port = resumed.no_port,
        duplicate = resumed.duplicate,
        full = resumed.full,
        torn = resumed.torn,
        discarded = resumed.discarded,
        millis = resumed.millis,
        state = %state.path().display(),
        "flows resumed from the state directory"
    );
    Ok(resumed)
}

/// Learns the next hop's MAC from the kernel (the config names none),
/// publishes it, and follows it on a thread until `stop`.
fn learn_next_hop(
    iface: &str,
    tables: &Arc<SharedTables>,
    stop: &Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let next_hop = NextHop::of(iface)?;
    let mac = next_hop.resolve(iface, NEXT_HOP_TIMEOUT)?;
    tables.learn_next_hop(mac);
    info!(gateway = %next_hop.gateway, mac = %rialto_rules::config::Mac(mac), "next hop learned");
    let shared = Arc::clone(tables);
    next_hop
        .follow(iface.to_owned(), mac, Arc::clone(stop), move |mac| {
            shared.learn_next_hop(mac);
        })
        .context("cannot follow the neighbour table")
}

/// Milliseconds since `since`.
fn millis(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// How long a drain asked through the API lasts at most, by default.
const DRAIN_SECONDS: u64 = 30;
/// The longest `--rx-gather-us` window: 10 ms, beyond which a frame's
/// wait would be a latency no user asks of a load balancer.
const MAX_GATHER_US: u64 = 10_000;

/// How long start-up waits for the next hop to answer ARP.
const NEXT_HOP_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the control loop looks for a change of a backend's health
/// (and for a take-over's release).
const HEALTH_FOLLOW: Duration = Duration::from_millis(20);

/// The signals `rialto run` acts on.
struct Signals {
    /// SIGINT: stop.
    stop: Arc<AtomicBool>,
    /// SIGTERM: stop, or drain first (`--drain-seconds`).
    terminate: Arc<AtomicBool>,
    /// SIGHUP: reload the config file.
    hangup: Arc<AtomicBool>,
    /// SIGUSR2: start the binary this Rialto was started from (a newer one,
    /// once installed over it), with the same arguments, to take over.
    upgrade: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Self> {
        let signals = Self {
            stop: Arc::default(),
            terminate: Arc::default(),
            hangup: Arc::default(),
            upgrade: Arc::default(),
        };
        for (signal, flag) in [
            (signal_hook::consts::SIGINT, &signals.stop),
            (signal_hook::consts::SIGTERM, &signals.terminate),
            (signal_hook::consts::SIGHUP, &signals.hangup),
            (signal_hook::consts::SIGUSR2, &signals.upgrade),
        ] {
            signal_hook::flag::register(signal, Arc::clone(flag))
                .context("cannot install a signal handler")?;
        }
        Ok(signals)
    }
}

/// How long a node of a fleet holds its health checks' failures at most,
/// waiting for one to pass (see [`health::Board::hold`]).
const HOLD_AT_MOST: Duration = Duration::from_secs(30);

/// How long a drained node of a fleet serves on after its withdrawal,
/// while the router's routes move to the others (a BGP update: within
/// milliseconds on the testbed), before it leaves its connections to them.
const FLEET_DRAIN: Duration = Duration::from_secs(2);

/// How `serve` ended.
enum Ended {
    /// SIGINT or SIGTERM.
    Stopped,
    /// A drain that ran its course: no flow left, or its time up.
    Drained,
    /// A take-over's release.
    Released(Release),
    /// A thread of the control plane ended (it panicked): Rialto stops, with
    /// exit status 1, so that a restart (systemd's) runs it again; the
    /// flows resume.
    Failed,
}

/// The control loop, until Rialto stops.
struct Serve<'a> {
    signals: &'a Signals,
    control: &'a Mutex<Control>,
    /// Per-worker rates every this many seconds (0: never).
    interval: u64,
    stats: &'a [(u32, Arc<WorkerStats>)],
    releases: &'a mpsc::Receiver<Release>,
    imports: Option<Imports>,
    announcer: Announcer,
    /// Set by the API (`POST /api/v1/drain`) or by SIGTERM with
    /// `--drain-seconds`.
    draining: Arc<AtomicBool>,
    /// How long a drain may last.
    drain_for: Duration,
    /// Whether SIGTERM drains first (`--drain-seconds`) or stops at once.
    term_drains: bool,
    /// With a fleet: whether this node holds every peer's flows.
    synced: Option<Arc<AtomicBool>>,
    /// The health checks, while their failures do not count (until one
    /// passes, or for [`HOLD_AT_MOST`]).
    hold: Option<Arc<health::Board>>,
    /// The control plane's threads, and whether each has ended.
    threads: Vec<(&'static str, HasEnded<'a>)>,
}

/// Whether a thread has ended.
type HasEnded<'a> = Box<dyn Fn() -> bool + 'a>;

impl Serve<'_> {
    /// Serves until `stop` is set, a drain has run its course, or a
    /// take-over asks for the release: reloads on SIGHUP and when an
    /// imported file changes, follows the backends' health, starts an
    /// upgrade on SIGUSR2, announces the VIPs while the workers make
    /// progress, and logs the rates.
    fn run(&mut self) -> Ended {
        let mut last: Vec<_> = self.stats.iter().map(|(_, s)| s.snapshot()).collect();
        let mut since = Instant::now();
        let mut health = 0;
        let mut reloaded = 0;
        let mut drain_since: Option<Instant> = None;
        let started = Instant::now();
        let workers: Vec<_> = self.stats.iter().map(|(_, s)| Arc::clone(s)).collect();
        loop {
            if self.signals.stop.load(Ordering::Relaxed) {
                return Ended::Stopped;
            }
            if self.signals.terminate.swap(false, Ordering::Relaxed) {
                match self.term_drains && !self.draining.swap(true, Ordering::Relaxed) {
                    true => info!("SIGTERM: draining (a second SIGTERM stops at once)"),
                    false => return Ended::Stopped,
                }
            }
            if let Ok(release) = self.releases.recv_timeout(HEALTH_FOLLOW) {
                return Ended::Released(release);
            }
            if let Some((thread, _)) = self.threads.iter().find(|(_, ended)| ended()) {
                error!(
                    thread,
                    "a thread of the control plane stopped: Rialto stops, so that a restart runs \
                     it again (the flows resume)"
                );
                return Ended::Failed;
            }
            lock(self.control).fail_open_stopped_workers();
            let board = lock(self.control).health.clone();
            if let Some(board) = board
                && board.version() != health
            {
                health = board.version();
                if let Err(e) = lock(self.control).apply_health() {
                    error!("the backends' health could not be put in force: {e}");
                }
            }
            if self.signals.hangup.swap(false, Ordering::Relaxed) {
                notify(&[NotifyState::Reloading]);
                match lock(self.control).reload(Source::File) {
                    Ok(generation) => info!(generation, "config reloaded"),
                    Err(e) => error!("reload rejected, the running config stays: {e:#}"),
                }
                notify(&[NotifyState::Ready]);
            }
            self.follow_imports(&mut reloaded);
            if self.signals.upgrade.swap(false, Ordering::Relaxed)
                && let Err(e) = takeover::upgrade()
            {
                error!("cannot start the upgrade, serving on: {e:#}");
            }
            if let Some(board) = &self.hold
                && started.elapsed() >= HOLD_AT_MOST
            {
                board.hold.store(false, Ordering::Relaxed);
                self.hold = None;
            }
            let draining = self.draining.load(Ordering::Relaxed);
            let syncing = (self.synced.as_ref()).is_some_and(|s| !s.load(Ordering::Acquire));
            if let Some(tables) = lock(self.control).view.tables.as_ref().map(|t| t.current()) {
                self.announcer.follow(&tables, &workers, draining, syncing);
            }
            if draining {
                let since = *drain_since.get_or_insert_with(Instant::now);
                let live: u64 = (workers.iter())
                    .filter_map(|w| w.snapshot().balance.map(|b| b.flows.live))
                    .sum();
                // In a fleet the peers hold this node's flows: once the
                // router has taken it out, they carry its connections.
                let handed = self.synced.is_some() && since.elapsed() >= FLEET_DRAIN;
                if live == 0 || handed || since.elapsed() >= self.drain_for {
                    info!(
                        flows_left = live,
                        with_the_peers = handed,
                        seconds = since.elapsed().as_secs_f64(),
                        "drained"
                    );
                    return Ended::Drained;
                }
            }
            if self.interval > 0 && since.elapsed() >= Duration::from_secs(self.interval) {
                let secs = since.elapsed().as_secs_f64();
                for ((queue, s), prev) in self.stats.iter().zip(&mut last) {
                    let now = s.snapshot();
                    info!(
                        queue,
                        rx_pps = ((now.rx_packets - prev.rx_packets) as f64 / secs) as u64,
                        tx_pps = ((now.tx_packets - prev.tx_packets) as f64 / secs) as u64,
                        "rates"
                    );
                    *prev = now;
                }
                since = Instant::now();
            }
        }
    }

    /// Reloads when an imported file changed; follows the files the config
    /// in force imports (`reloaded`: the reloads seen so far).
    fn follow_imports(&mut self, reloaded: &mut u64) {
        let Some(imports) = self.imports.as_mut() else {
            return;
        };
        if imports.settled_change() {
            match lock(self.control).reload(Source::File) {
                Ok(generation) => info!(generation, "an imported file changed: reloaded"),
                Err(e) => error!(
                    "an imported file changed, reload rejected, the running config stays: {e:#}"
                ),
            }
        }
        // Whatever reloaded (a signal, the API, the files), the files to
        // follow are the config's now.
        let ok = lock(self.control).view.reloads().ok;
        if ok != *reloaded {
            *reloaded = ok;
            if let Some(config) = lock(self.control).view.config.clone() {
                imports.follow(&config);
            }
        }
    }
}

/// Tells the service manager (systemd, `Type=notify`), if one started this
/// process, what state it is in.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        warn!("cannot notify the service manager: {e}");
    }
}

/// The control plane, once nothing else holds it (the API's last
/// requests end within their deadline), so that dropping it detaches the
/// XDP program and unlocks the state directory there and then.
fn sole(mut control: Arc<Mutex<Control>>) -> Control {
    loop {
        match Arc::try_unwrap(control) {
            Ok(control) => {
                return control
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            Err(shared) => control = shared,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The control plane, even if a panic while it was held poisoned the lock.
fn lock(control: &Mutex<Control>) -> std::sync::MutexGuard<'_, Control> {
    control
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
