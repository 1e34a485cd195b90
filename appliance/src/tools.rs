//! `rialto check`, `rialto replay` and `rialto maglev`: offline tools, no
//! NIC needed; and `rialto stats`, a live view of a running rialto.

use std::{fs::File, io::BufWriter, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context, Result};
use clap::Args;
use rialto::replay::{self, Stages};
use rialto_rules::{MaglevHash, WeightedBackend, maglev};

/// Validate config files without touching the network.
///
/// Each FILE is parsed and compiled exactly as `rialto run --config` would
/// (Maglev tables included), for --workers workers on this machine: its
/// tables must fit limits.memory_mib and the memory this machine has
/// available. Every problem is printed on stderr as
/// `FILE:LINE:COLUMN: field: reason`, not just the first; a good file gets
/// one line on stdout saying what it holds. Exits non-zero if any file has
/// a problem.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config files (TOML).
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,

    /// Check for this many workers (one per receive queue `rialto run`
    /// serves) [default: one per CPU of this machine].
    #[arg(long)]
    workers: Option<u32>,
}

pub fn check(args: &CheckArgs) -> Result<ExitCode> {
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let budget = rialto::host::budget(workers);
    let mut good = true;
    for path in &args.files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
        match rialto_rules::load_for(&name, &text, &budget) {
            Ok(snapshot) => {
                let backends: usize = snapshot.services.iter().map(|s| s.backends.len()).sum();
                println!(
                    "{name}: ok: {} service(s), {} backend(s), {} cluster(s)",
                    snapshot.services.len(),
                    backends,
                    snapshot.clusters.len()
                );
            }
            Err(rejected) => {
                eprintln!("{rejected}");
                good = false;
            }
        }
    }
    Ok(if good {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Show a running rialto's rates, live: per worker packets/s in and out,
/// drops/s, handoffs/s and flows, then the drops/s by reason.
///
/// Reads the operator API of `rialto run` (its --api address); run it in
/// the same network namespace.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The API of the running rialto.
    #[arg(long, value_name = "ADDR:PORT", default_value = crate::api::DEFAULT_API)]
    api: std::net::SocketAddr,

    /// Seconds between two views.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,

    /// Stop after this many views [default: until interrupted].
    #[arg(long)]
    count: Option<u64>,
}

/// Drain this node: withdraw its VIPs (BGP, or what /api/v1/announce
/// says), serve what still arrives, and stop once no flow is left or after
/// `rialto run --drain-seconds` (30 by default).
///
/// Reads the operator API of `rialto run` (its --api address); run it in
/// the same network namespace.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The API of the running rialto.
    #[arg(long, value_name = "ADDR:PORT", default_value = crate::api::DEFAULT_API)]
    api: std::net::SocketAddr,
}

pub fn drain(args: &DrainArgs) -> Result<ExitCode> {
    let url = format!("http://{}/api/v1/drain", args.api);
    agent()
        .post(&url)
        .send_empty()
        .with_context(|| format!("cannot reach rialto's API at {}", args.api))?;
    println!(
        "draining: withdrawn, serving what still arrives until no flow is left (in a fleet: \
         until the router has taken it out, its peers then carry its connections)"
    );
    Ok(ExitCode::SUCCESS)
}

/// A client of the operator API, whose every request has a deadline.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .into()
}

pub fn stats(args: &StatsArgs) -> Result<ExitCode> {
    let agent = agent();
    let fetch = |what: &str| -> Result<serde_json::Value> {
        let url = format!("http://{}/api/v1/{what}", args.api);
        let document = agent
            .get(&url)
            .call()
            .with_context(|| format!("cannot reach rialto's API at {}", args.api))?
            .body_mut()
            .read_json()
            .with_context(|| format!("{url}: not the {what} JSON"))?;
        Ok(document)
    };
    let interval = std::time::Duration::from_secs_f64(args.interval.max(0.1));
    let mut before = fetch("status")?;
    let mut shown = 0;
    while args.count.is_none_or(|n| shown < n) {
        std::thread::sleep(interval);
        let now = fetch("status")?;
        let view =
            render_rates(&before, &now, interval.as_secs_f64()) + &render_down(&fetch("services")?);
        // A reader that went away (`| head`) ends the views, not in a panic.
        if std::io::Write::write_all(&mut std::io::stdout(), view.as_bytes()).is_err() {
            break;
        }
        before = now;
        shown += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// The backends that take no new flow because their checks fail, one a
/// line, or that there is none.
fn render_down(services: &serde_json::Value) -> String {
    let empty = Vec::new();
    let down: Vec<String> = (services.as_array().unwrap_or(&empty).iter())
        .flat_map(|s| {
            (s["backends"].as_array().unwrap_or(&empty).iter())
                .filter(|b| b["health"]["up"] == false)
                .map(move |b| {
                    format!(
                        "  {} {} {}: {} ({} ms)",
                        s["name"].as_str().unwrap_or_default(),
                        b["cluster"].as_str().unwrap_or_default(),
                        b["addr"].as_str().unwrap_or_default(),
                        b["health"]["last"].as_str().unwrap_or_default(),
                        b["health"]["latency_ms"].as_f64().unwrap_or(0.0).round()
                    )
                })
        })
        .collect();
    match down.is_empty() {
        true => "backends down: none\n\n".to_owned(),
        false => format!("backends down:\n{}\n\n", down.join("\n")),
    }
}

/// One view of `rialto stats`: the rates between two status documents
/// taken `secs` apart.
fn render_rates(before: &serde_json::Value, now: &serde_json::Value, secs: f64) -> String {
    use std::fmt::Write as _;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let rate =
        |a: &serde_json::Value, b: &serde_json::Value| (n(b).saturating_sub(n(a))) as f64 / secs;
    let reloads = &now["reloads"];
    let announce = &now["announce"];
    let mut out = format!(
        "config generation {} · reloads: {} ok, {} rejected{} · {}\n",
        n(&now["generation"]),
        n(&reloads["ok"]),
        n(&reloads["rejected"]),
        reloads["last"]["message"]
            .as_str()
            .map(|m| format!(" (last: {m})"))
            .unwrap_or_default(),
        match announce["announced"].as_bool() {
            Some(true) => "announced".to_owned(),
            _ => format!("withdrawn ({})", announce["why"].as_str().unwrap_or("?")),
        },
    );
    let _ = writeln!(
        out,
        "{:>5} {:>10} {:>10} {:>9} {:>10} {:>9} {:>8}",
        "queue", "rx pkt/s", "tx pkt/s", "drop/s", "handoff/s", "flows", "new/s"
    );
    let empty = Vec::new();
    let workers = now["workers"].as_array().unwrap_or(&empty);
    let previous = before["workers"].as_array().unwrap_or(&empty);
    let mut drops = std::collections::BTreeMap::<String, f64>::new();
    for (w, p) in workers.iter().zip(previous) {
        let mut dropped = 0.0;
        for (reason, count) in w["drops"].as_object().into_iter().flatten() {
            let r = rate(&p["drops"][reason], count);
            dropped += r;
            *drops.entry(reason.clone()).or_default() += r;
        }
        let _ = writeln!(
            out,
            "{:>5} {:>10.0} {:>10.0} {:>9.0} {:>10.0} {:>9} {:>8.0}",
            n(&w["queue"]),
            rate(&p["rx_packets"], &w["rx_packets"]),
            rate(&p["tx_packets"], &w["tx_packets"]),
            dropped,
            rate(&p["handoff_out"], &w["handoff_out"]),
            w["balance"]["flows"]["live"]
                .as_u64()
                .map_or("-".into(), |f| f.to_string()),
            rate(
                &p["balance"]["flows"]["created"],
                &w["balance"]["flows"]["created"]
            ),
        );
    }
    let dropping: Vec<String> = drops
        .iter()
        .filter(|(_, r)| **r > 0.0)
        .map(|(reason, r)| format!("{reason} {r:.0}"))
        .collect();
    let _ = writeln!(
        out,
        "drops/s by reason: {}",
        if dropping.is_empty() {
            "none".to_owned()
        } else {
            dropping.join(", ")
        }
    );
    // The fleet: per peer, its state and the flows it sent per second.
    let peers = now["fleet"]["peers"].as_array().unwrap_or(&empty);
    let before_peers = before["fleet"]["peers"].as_array().unwrap_or(&empty);
    if !peers.is_empty() {
        let shown: Vec<String> = (peers.iter().zip(before_peers))
            .map(|(p, b)| {
                let rejected: u64 = (p["rejected"].as_object().into_iter().flatten())
                    .map(|(_, n)| n.as_u64().unwrap_or(0))
                    .sum();
                format!(
                    "node {} {} ({:.0} flows/s in, {} lost, {} rejected)",
                    n(&p["node"]),
                    p["state"].as_str().unwrap_or("?"),
                    rate(&b["flows_received"], &p["flows_received"]),
                    n(&p["lost"]),
                    rejected
                )
            })
            .collect();
        let delay = &now["fleet"]["replication_delay"];
        let _ = writeln!(
            out,
            "fleet node {} · {:.0} flows/s out · replication delay p50 {:.2} ms, p99 {:.2} ms · peers: {}",
            n(&now["fleet"]["node"]),
            rate(&before["fleet"]["flows_sent"], &now["fleet"]["flows_sent"]),
            delay["p50_ms"].as_f64().unwrap_or(0.0),
            delay["p99_ms"].as_f64().unwrap_or(0.0),
            shown.join(", ")
        );
    }
    out
}

/// Run the pipeline over a capture and summarise what it did.
///
/// Every frame of IN goes through the same pipeline `rialto run` runs, with
/// the capture's timestamps as the clock. What the pipeline transmits is
/// written to OUT; the summary (frames, transmitted, drops by reason, the
/// balancer's counters, the flow table's events) is printed on stdout as
/// JSON. Exit status 0; 3 if the capture ends inside a record (a file cut
/// short: the summary is of the records before it); 1 on an error.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The border node's config (TOML), as for `rialto run`.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// The capture to replay (pcap, Ethernet).
    #[arg(long = "in", value_name = "IN")]
    input: PathBuf,

    /// Where to write the transmitted frames (pcap).
    #[arg(long = "out", value_name = "OUT")]
    output: PathBuf,

    /// Run the decapsulation stage only: VXLAN from a configured peer is
    /// written out as its inner frame, anything else is dropped.
    #[arg(long)]
    decap: bool,
}

/// `rialto replay`'s exit status when the capture is cut short.
const REPLAY_TRUNCATED: u8 = 3;

pub fn replay(args: &ReplayArgs) -> Result<ExitCode> {
    let tables = Arc::new(rialto::host::load_config(
        &args.config,
        &rialto_rules::Budget::OFFLINE,
    )?);
    let input =
        File::open(&args.input).with_context(|| format!("cannot open {}", args.input.display()))?;
    let output = File::create(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let stages = if args.decap {
        Stages::Decapsulate
    } else {
        Stages::All
    };
    let summary = replay::replay(tables, stages, input, BufWriter::new(output))
        .with_context(|| format!("replaying {}", args.input.display()))?;
    println!("{}", serde_json::to_string(&summary)?);
    if summary.truncated {
        eprintln!(
            "rialto: warning: {} ends inside a record: replayed the {} frames before it",
            args.input.display(),
            summary.frames
        );
        return Ok(ExitCode::from(REPLAY_TRUNCATED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Print a Maglev lookup table, one line per slot: `SLOT<TAB>BACKEND`.
///
/// Two nodes given the same backends, weights, size and hash print the same
/// table; `diff` shows where they disagree. With `--hash cilium` the table
/// is the one Cilium's `pkg/maglev` builds (default seed), for fleets that
/// mix Cilium and Rialto nodes.
#[derive(Debug, Args)]
pub struct MaglevArgs {
    /// rialto, or cilium for Cilium's tables.
    #[arg(long, default_value_t = MaglevHash::Rialto)]
    hash: MaglevHash,

    /// Slots in the table: a prime; Cilium accepts only its own sizes
    /// [default: 65537, or Cilium's 16381 with --hash cilium].
    #[arg(long)]
    size: Option<u32>,

    /// Backends as ADDR:PORT/PROTO[@SCOPE][=WEIGHT], e.g. 198.19.0.5:8080/TCP=3;
    /// a node's config puts each backend in its cluster's VNI as scope
    /// (198.19.0.5:8080/TCP@100=3), so two clusters may share pod addresses.
    #[arg(value_name = "BACKEND[=WEIGHT]", required = true)]
    backends: Vec<WeightedBackend>,
}

pub fn maglev(args: &MaglevArgs) -> Result<ExitCode> {
    let size = args.size.unwrap_or(args.hash.default_table_size());
    let table = maglev::Table::build(args.hash, size, &args.backends)?;
    print!("{}", maglev::render(&table, &args.backends));
    Ok(ExitCode::SUCCESS)
}
