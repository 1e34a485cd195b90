//! `rialto-traffic gen` and `rialto-traffic sink`: traffic over AF_XDP for
//! the benchmarks, the testbed or a real link (see
//! `rialto_benches::traffic`).

use std::{
    io::IsTerminal,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rialto::{
    afxdp::{PortConfig, XskPort},
    host::{XdpMode, iface_mac, load_config, rx_queue_count},
};
use rialto_benches::traffic::{self, Expect, Flows, Plan, ReplyQueue, Sink, Spec, Tunnel};
use rialto_rules::{Endpoint, Proto, Snapshot, Steering as SteeringRules, config::Mac};
use tracing::info;
use tracing_subscriber::EnvFilter;
use xdp_redirect::Steering;

/// Traffic over AF_XDP for Rialto's benchmarks and tests: a generator that
/// checks what comes back, and a sink.
#[derive(Debug, Parser)]
#[command(name = "rialto-traffic", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Gen(GenArgs),
    Sink(SinkArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Gen(args) => gen_traffic(&args),
        Command::Sink(args) => sink(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rialto-traffic: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Send UDP flows to a service over AF_XDP, and check what comes back.
///
/// Frames leave on every queue of --iface (flow i on queue i mod queues),
/// flat out or at --rate, for --warmup then --duration seconds. What comes
/// back on the same interface is checked as `rialto-traffic sink` does. Prints a JSON
/// report on stdout: packets sent and received (and per second), loss, and
/// the frames that were not as expected, by reason.
#[derive(Debug, Args)]
pub struct GenArgs {
    #[command(flatten)]
    sink: SinkArgs,
    /// Where the frames go: the device under test's MAC.
    #[arg(long, value_name = "MAC")]
    dst_mac: Mac,
    /// The first client address; each takes up to 50,000 flows (ports 10000-59999).
    #[arg(long, default_value = "198.18.0.2")]
    client: IpAddr,
    /// Flows sending at any time (distinct UDP source address and port).
    #[arg(long, default_value_t = 1)]
    flows: u32,
    /// Frame length in bytes from the Ethernet header, without FCS (the inner
    /// frame's, with --from-cluster).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Packets per second over all queues (0: flat out).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// At a --rate, poll for what comes back without sleeping between the
    /// frames due: the latency measured is then the device's and the rings',
    /// not the generator's sleeps (its CPU is then a whole core's).
    #[arg(long, requires = "rate")]
    spin: bool,
    /// New flows per second: the flows sending slide through --flow-space.
    #[arg(long, default_value_t = 0, requires = "flow_space")]
    churn: u64,
    /// Distinct flows to slide through with --churn (default: --flows).
    #[arg(long)]
    flow_space: Option<u32>,
    /// Encapsulate in VXLAN as a client inside this cluster of --config does:
    /// from its gateway to Rialto's VTEP, with its VNI.
    #[arg(long, value_name = "CLUSTER", requires = "config")]
    from_cluster: Option<String>,
    /// Seconds sent before the measurement starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Send the backends' replies instead (the return path): first each
    /// flow's frame until it has come back forwarded, then, per flow, the
    /// reply its backend would send, arriving on the queue of the worker
    /// that owns the flow (same) or on another one (other: every reply is
    /// handed over); what comes back must reach the client from the VIP.
    #[arg(long, value_enum, requires = "config", conflicts_with_all = ["churn", "from_cluster"])]
    replies: Option<ReplyQueue>,
}

/// Receive on an interface over AF_XDP and check what arrives.
///
/// With --config, frames must be forwarded as that config says (VXLAN from
/// Rialto's VTEP to a gateway, the cluster's VNI, a backend of --vip in that
/// cluster, a SNAT source address, valid checksums); without it, they must
/// be the generator's own frames, sent back. Prints a JSON report on stdout.
#[derive(Debug, Args)]
pub struct SinkArgs {
    /// The interface to receive on (all its queues, or --queues).
    #[arg(long, value_name = "IF")]
    iface: String,
    #[arg(long, value_name = "Q,...", value_delimiter = ',')]
    queues: Vec<u32>,
    /// Pin the (single) thread to this core.
    #[arg(long)]
    core: Option<usize>,
    /// The UDP service the traffic is for.
    #[arg(long, value_name = "ADDR:PORT")]
    vip: SocketAddr,
    /// The config of the device under test.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// What must come back (default: forward with --config, else echo).
    #[arg(long, value_enum)]
    expect: Option<ExpectArg>,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Also receive VXLAN from this address (besides --config's VTEPs).
    #[arg(long = "tunnel-peer", value_name = "ADDR")]
    tunnel_peers: Vec<IpAddr>,
    /// Also receive anything to this address.
    #[arg(long = "to-addr", value_name = "ADDR")]
    to_addrs: Vec<IpAddr>,
    #[arg(long, value_enum, default_value_t = XdpMode::Driver)]
    xdp_mode: XdpMode,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExpectArg {
    /// The generator's frames, sent back (addresses may be swapped).
    Echo,
    /// Load-balanced and encapsulated as --config says.
    Forward,
}

pub fn gen_traffic(args: &GenArgs) -> Result<ExitCode> {
    let config = args
        .sink
        .config
        .as_deref()
        .map(|c| load_config(c, &rialto_rules::Budget::OFFLINE))
        .transpose()?;
    let tunnel = match &args.from_cluster {
        None => None,
        Some(name) => Some(tunnel_from(config.as_ref().expect("clap requires"), name)?),
    };
    let space = args.flow_space.unwrap_or(args.flows).max(args.flows);
    let spec = Spec {
        space,
        size: args.size,
        src_mac: iface_mac(&args.sink.iface)?,
        dst_mac: args.dst_mac.0,
        client: args.client,
        vip: args.sink.vip,
        tunnel,
    };
    let flows = Flows::build(&spec)?;
    let mut also = SteeringRules {
        tunnel_peers: tunnel.map(|t| t.src).into_iter().collect(),
        ..SteeringRules::default()
    };
    // Frames sent back with their addresses swapped go to the clients.
    also.snat_addrs.extend(
        (0..space.div_ceil(traffic::PORTS_PER_CLIENT))
            .filter_map(|n| traffic::client(args.client, n * traffic::PORTS_PER_CLIENT))
            .map(|(addr, _)| addr),
    );
    let plan = Plan {
        rate: args.rate,
        spin: args.spin,
        flows: args.flows,
        churn: args.churn,
        warmup: seconds(args.warmup)?,
        duration: seconds(args.sink.duration)?,
        batch: PortConfig::default().batch,
    };
    let traffic = Traffic {
        flows: &flows,
        replies: args.replies,
        clients: args.client,
    };
    exchange(&args.sink, config.as_ref(), also, Some(traffic), &plan)
}

/// What the generator sends: `flows`, or with `replies`, their backends' replies.
struct Traffic<'a> {
    flows: &'a Flows,
    replies: Option<ReplyQueue>,
    clients: IpAddr,
}

/// How long the generator sends flows whose frames have not come back
/// before it gives up on learning their replies.
const LEARNING: Duration = Duration::from_secs(3);

pub fn sink(args: &SinkArgs) -> Result<ExitCode> {
    let config = args
        .config
        .as_deref()
        .map(|c| load_config(c, &rialto_rules::Budget::OFFLINE))
        .transpose()?;
    let plan = Plan {
        rate: 0,
        spin: false,
        flows: 0,
        churn: 0,
        warmup: Duration::ZERO,
        duration: seconds(args.duration)?,
        batch: PortConfig::default().batch,
    };
    exchange(args, config.as_ref(), SteeringRules::default(), None, &plan)
}

fn seconds(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{s}: not a number of seconds"))
}

/// The tunnel a client inside `cluster` sends through.
fn tunnel_from(config: &Snapshot, cluster: &str) -> Result<Tunnel> {
    let Some(c) = config.clusters.iter().find(|c| c.name == cluster) else {
        bail!("no cluster {cluster:?} in the config");
    };
    let src = c.gateways[0];
    let dst = match src {
        IpAddr::V4(_) => config.node.vtep_v4.map(IpAddr::V4),
        IpAddr::V6(_) => config.node.vtep_v6.map(IpAddr::V6),
    };
    Ok(Tunnel {
        src,
        dst: dst.context("the config has no VTEP of the gateway's family")?,
        vni: c.vni,
        inner_mac: c.gateway_mac,
        port: config.node.vxlan_port,
    })
}

/// Opens the sockets, steers what must come back into them, and runs.
fn exchange(
    args: &SinkArgs,
    config: Option<&Snapshot>,
    mut steer: SteeringRules,
    traffic: Option<Traffic<'_>>,
    plan: &Plan,
) -> Result<ExitCode> {
    let expect = match (args.expect, config) {
        (Some(ExpectArg::Echo), _) | (None, None) => Expect::Echo,
        (_, Some(config)) => Expect::forward(config, args.vip).map_err(anyhow::Error::msg)?,
        (Some(ExpectArg::Forward), None) => bail!("--expect forward needs --config"),
    };
    steer.vips.push(Endpoint {
        addr: args.vip.ip(),
        port: args.vip.port(),
        proto: Proto::Udp,
    });
    steer.tunnel_peers.extend(&args.tunnel_peers);
    steer.snat_addrs.extend(&args.to_addrs);
    if let Some(config) = config {
        let node = config.node;
        steer.vxlan_port = node.vxlan_port;
        let vteps = [node.vtep_v4.map(IpAddr::V4), node.vtep_v6.map(IpAddr::V6)];
        steer.tunnel_peers.extend(vteps.into_iter().flatten());
        // The sink stands for the clusters' gateways: VXLAN to them is its.
        steer.vteps.extend(
            config
                .clusters
                .iter()
                .flat_map(|c| c.gateways.iter().copied()),
        );
    }
    let queues: Vec<u32> = match args.queues.is_empty() {
        true => (0..rx_queue_count(&args.iface)?).collect(),
        false => args.queues.clone(),
    };
    let mut steering = Steering::load(&steer)?;
    steering.attach(&args.iface, args.xdp_mode.into())?;
    let mut ports = XskPort::open_shared(&args.iface, &queues, &PortConfig::default())?;
    for (&queue, port) in queues.iter().zip(&ports) {
        steering.register_socket(queue, port.raw_fd())?;
    }
    if let Some(id) = args.core
        && !core_affinity::set_for_current(core_affinity::CoreId { id })
    {
        bail!("cannot pin to core {id}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install a signal handler")?;
    }
    info!(iface = %args.iface, ?queues, expect = expect.name(), "started");
    let mut sink = Sink::new(expect);
    let replies;
    let mut flows = traffic.as_ref().map(|t| t.flows);
    if let Some(Traffic {
        flows: forward,
        replies: Some(queue),
        clients,
    }) = traffic
    {
        replies = traffic::replies(&mut ports, forward, &mut sink, queue, LEARNING)
            .map_err(anyhow::Error::msg)?;
        if sink.mismatches.iter().any(|&n| n > 0) {
            bail!("forwarded frames not as expected: {:?}", sink.mismatches);
        }
        info!(flows = replies.space(), ?queue, "learned the replies");
        flows = Some(&replies);
        sink = Sink::new(Expect::Return {
            vip: args.vip,
            clients,
        });
    }
    let report = traffic::run(&mut ports, flows, plan, &mut sink, &stop);
    info!(
        sent = report.sent,
        received = report.received,
        median_tx_pps = report.median_tx_pps,
        median_rx_pps = report.median_rx_pps,
        loss = format!("{:.4}", report.loss),
        ok = report.ok,
        mismatches = ?report.mismatches,
        latency_us = report.latency.map_or("none".to_owned(), |l| format!(
            "p50 {:.1}, p99 {:.1}, max {:.1}",
            l.p50_ns as f64 / 1e3,
            l.p99_ns as f64 / 1e3,
            l.max_ns as f64 / 1e3
        )),
        "done"
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}
