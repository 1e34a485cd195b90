//! The traffic generator and sink (`rialto gen`, `rialto sink`) on a real
//! veth pair, against the real `rialto run`; and the side-by-side benchmark
//! (`benches/side-by-side.py`), run short, prints its table and writes its
//! files.

use std::{path::PathBuf, process::Command, time::Duration};

use rialto_testbed::{Pair, Rialto, ip, netns_command, workspace_root};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rialto");
const VIP: &str = "198.18.100.1:7";
const NODE_MAC: &str = "02:00:00:00:00:01";
const PEER_MAC: &str = "02:00:00:00:00:02";

fn bench_config() -> PathBuf {
    workspace_root().join("benches/side-by-side/rialto.toml")
}

/// A one-queue pair whose ends have the MACs the benchmark's config names.
fn pair() -> Pair {
    let pair = Pair::up(1);
    ip(
        &pair.node_ns,
        &format!("link set {} address {NODE_MAC}", pair.node_if),
    );
    ip(
        &pair.peer_ns,
        &format!("link set {} address {PEER_MAC}", pair.peer_if),
    );
    pair
}

/// Runs `rialto ARGS` in `ns` to completion; its JSON report.
fn report(ns: &str, args: &[&str]) -> Value {
    let out = netns_command(ns, BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "rialto {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rialto {args:?} printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn gen_args<'a>(pair: &'a Pair, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "gen",
        "--iface",
        &pair.peer_if,
        "--dst-mac",
        NODE_MAC,
        "--vip",
        VIP,
    ];
    args.extend_from_slice(extra);
    args
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn the_sink_gets_every_frame_the_generator_sends() {
    let pair = pair();
    let sink = netns_command(&pair.node_ns, BIN)
        .args([
            "sink",
            "--iface",
            &pair.node_if,
            "--vip",
            VIP,
            "--duration",
            "5",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let sent = report(
        &pair.peer_ns,
        &gen_args(
            &pair,
            &[
                "--flows",
                "500",
                "--size",
                "300",
                "--rate",
                "20000",
                "--warmup",
                "0.5",
                "--duration",
                "1",
            ],
        ),
    );
    let out = sink.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = u64_of(&sent, "sent");
    assert!((29_000..=30_001).contains(&n), "20,000/s for 1.5 s: {n}");
    assert_eq!(got["expect"], "echo");
    assert_eq!(got["mismatches"], serde_json::json!({}), "{got}");
    // Nothing steers the generator's own frames back to it.
    assert_eq!(u64_of(&sent, "received"), 0, "{sent}");
    assert_eq!(u64_of(&got, "received"), u64_of(&got, "ok"));
    assert!(
        u64_of(&got, "ok") * 100 >= n * 99 && u64_of(&got, "ok") <= n,
        "the sink got {got} of {n} sent"
    );
}

#[test]
fn the_generator_checks_rialtos_forwarding_plain_and_from_a_cluster() {
    let pair = pair();
    let config = bench_config();
    let config = config.to_str().unwrap();
    let rialto = Rialto::start(
        BIN,
        &pair.node_ns,
        &["--iface", &pair.node_if, "--config", config, "--no-api"],
    );
    let common = [
        "--config",
        config,
        "--rate",
        "30000",
        "--warmup",
        "0.5",
        "--duration",
        "1",
    ];
    let plain = report(
        &pair.peer_ns,
        &gen_args(
            &pair,
            &[&common[..], &["--flows", "2000", "--size", "64"]].concat(),
        ),
    );
    let tunneled = report(
        &pair.peer_ns,
        &gen_args(
            &pair,
            &[
                &common[..],
                &[
                    "--flows",
                    "300",
                    "--size",
                    "512",
                    "--from-cluster",
                    "west",
                    "--client",
                    "198.19.2.100",
                ],
            ]
            .concat(),
        ),
    );
    let (_, summary) = rialto.terminate();
    for (what, r) in [("plain", &plain), ("from west", &tunneled)] {
        assert_eq!(r["expect"], "forward", "{what}: {r}");
        assert_eq!(r["mismatches"], serde_json::json!({}), "{what}: {r}");
        let (sent, ok) = (u64_of(r, "sent"), u64_of(r, "ok"));
        assert_eq!(
            ok,
            u64_of(r, "received"),
            "{what}: every frame back as the config says"
        );
        assert!(ok * 100 >= sent * 99, "{what}: {ok} of {sent} came back");
    }
    assert_eq!(u64_of(&tunneled, "frame_len"), 512 + 50);
    let worker = &summary["workers"][0];
    assert_eq!(
        worker["balance"]["flows"]["created"].as_u64(),
        Some(2300),
        "one flow per generated flow: {worker}"
    );
    assert_eq!(
        u64_of(worker, "tx_packets"),
        u64_of(&plain, "received") + u64_of(&tunneled, "received"),
        "everything Rialto sent came back to the sink"
    );
}

/// The benchmark command, short: one frame size and flow count, both
/// worker counts, every system; then a 15-second soak.
#[test]
fn the_side_by_side_benchmark_prints_its_table_and_writes_its_files() {
    rialto_testbed::require_root();
    let out_dir = tempdir();
    let script = workspace_root().join("benches/side-by-side.py");
    // Whether it succeeded, and what it printed.
    let run = |args: &[&str]| {
        let out = Command::new(&script)
            .args(args)
            .args(["--out", out_dir.to_str().unwrap()])
            .env("RIALTO", BIN)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stdout.is_empty(), "{args:?} printed nothing: {stderr}");
        (out.status.success(), stdout)
    };
    let (ok, table) = run(&["--seconds", "1", "--sizes", "64", "--flows", "10000"]);
    assert!(ok, "every frame came back as expected: {table}");
    let head = table.lines().next().unwrap();
    for column in [
        "rialto",
        "bare",
        "xdp-io",
        "xdp-macswap",
        "packet-io",
        "packet-macswap",
        "kernel",
        "rialto/bare",
        "rialto/DPDK",
        "rialto/kernel",
    ] {
        assert!(
            head.split_whitespace().any(|c| c == column),
            "{column} in {head}"
        );
    }
    let rows: Vec<_> = table
        .lines()
        .filter(|l| l.trim_start().starts_with("64 B"))
        .collect();
    assert_eq!(rows.len(), 2, "a row per worker count: {table}");
    for target in [
        "rialto/bare >= 0.9",
        "rialto/DPDK >= 1.0",
        "rialto/kernel >= 3.0",
    ] {
        assert!(table.contains(target), "{target}: {table}");
    }
    let cells: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("side-by-side.json")).unwrap())
            .unwrap();
    assert_eq!(cells.len(), 14);
    for cell in &cells {
        assert!(u64_of(cell, "pps") > 0, "{cell}");
        assert!(u64_of(cell, "ok") > 0, "{cell}");
    }
    let md = std::fs::read_to_string(out_dir.join("side-by-side.md")).unwrap();
    assert!(md.contains("| 64 B | 10,000 | 2 |"), "{md}");
    let png = std::fs::read(out_dir.join("side-by-side.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");

    // Too short for the lines to settle (the flow table's pages are still
    // being touched): only the report is checked, not its verdicts.
    let (_, soak) = run(&["--soak", "0.25", "--workers", "2"]);
    for line in ["RSS (KiB): ", "UMEM frames in use: ", "live flows: "] {
        assert!(soak.contains(line), "{line}: {soak}");
    }
    assert!(
        soak.contains("every UMEM frame accounted for at exit: True"),
        "{soak}"
    );
    assert!(soak.contains("mismatches none"), "{soak}");
    std::fs::remove_dir_all(&out_dir).unwrap();
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rialto-sbs-test.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
