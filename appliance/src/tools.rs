//! `rialto check`, `rialto replay` and `rialto maglev`: offline tools, no
//! NIC needed.

use std::{fs::File, io::BufWriter, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context, Result};
use clap::Args;
use rialto::replay::{self, Stages};
use rialto_rules::{MaglevHash, WeightedBackend, maglev};

/// Validate config files without touching the network.
///
/// Each FILE is parsed and compiled exactly as `rialto run --config` would
/// (Maglev tables included). Every problem is printed on stderr as
/// `FILE:LINE:COLUMN: field: reason`, not just the first; a good file gets
/// one line on stdout saying what it holds. Exits non-zero if any file has
/// a problem.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config files (TOML).
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
}

pub fn check(args: &CheckArgs) -> Result<ExitCode> {
    let mut good = true;
    for path in &args.files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
        match rialto_rules::load(&name, &text) {
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

/// Run the pipeline over a capture and summarise what it did.
///
/// Every frame of IN goes through the same pipeline `rialto run` runs, with
/// the capture's timestamps as the clock. What the pipeline transmits is
/// written to OUT; the summary (frames, transmitted, drops by reason) is
/// printed on stdout as JSON.
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

pub fn replay(args: &ReplayArgs) -> Result<ExitCode> {
    let tables = Arc::new(crate::run::load_config(&args.config)?);
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

    /// Backends as ADDR:PORT/PROTO[=WEIGHT], e.g. 198.19.0.5:8080/TCP=3.
    #[arg(value_name = "BACKEND[=WEIGHT]", required = true)]
    backends: Vec<WeightedBackend>,
}

pub fn maglev(args: &MaglevArgs) -> Result<ExitCode> {
    let size = args.size.unwrap_or(args.hash.default_table_size());
    let table = maglev::Table::build(args.hash, size, &args.backends)?;
    print!("{}", maglev::render(&table, &args.backends));
    Ok(ExitCode::SUCCESS)
}
