//! The traffic generator and sink (`rialto-traffic gen`, `rialto-traffic
//! sink`) on a real veth pair, against the real `rialto run`.

use std::{path::PathBuf, time::Duration};

use rialto_testbed::{Pair, Rialto, ip, netns_command, workspace_root};
use serde_json::Value;

const TRAFFIC: &str = env!("CARGO_BIN_EXE_rialto-traffic");
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
    let out = rialto_testbed::output_within(
        netns_command(ns, TRAFFIC).args(args),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "rialto-traffic {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rialto-traffic {args:?} printed no report ({e}): {}",
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
    let mut sink = netns_command(&pair.node_ns, TRAFFIC)
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
    // The sink is ready once it says so: its sockets are bound.
    let log = rialto_testbed::lines_of(sink.stderr.take().unwrap());
    let mut seen = Vec::new();
    if rialto_testbed::line_within(&log, "started", Duration::from_secs(20), &mut seen).is_none() {
        panic!("the sink did not start:\n{}", seen.join("\n"));
    }
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
    let out = rialto_testbed::wait_within(sink, Duration::from_secs(30))
        .unwrap_or_else(|(what, _)| panic!("the sink {what}"));
    assert!(
        out.status.success(),
        "{:?}",
        log.try_iter().collect::<Vec<_>>()
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = u64_of(&sent, "sent");
    // The rate is a limit, never exceeded (what it reaches on a loaded
    // machine is the benchmark's business, not a test's).
    assert!(n > 0 && n <= 30_001, "at most 20,000/s for 1.5 s: {n}");
    assert_eq!(got["expect"], "echo");
    assert_eq!(got["mismatches"], serde_json::json!({}), "{got}");
    // Nothing steers the generator's own frames back to it.
    assert_eq!(u64_of(&sent, "received"), 0, "{sent}");
    assert_eq!(u64_of(&got, "received"), u64_of(&got, "ok"));
    assert!(
        u64_of(&got, "ok") * 100 >= n * 99 && u64_of(&got, "ok") <= n,
        "the sink got {got} of {n} sent"
    );
    // The stamps are the generator's clock: a sink alone times nothing,
    // and a generator nothing that did not come back.
    assert_eq!(got["latency"], Value::Null, "{got}");
    assert_eq!(sent["latency"], Value::Null, "{sent}");
}

#[test]
fn the_generator_checks_rialtos_forwarding_plain_and_from_a_cluster() {
    let pair = pair();
    let config = bench_config();
    let config = config.to_str().unwrap();
    let rialto = Rialto::start(
        &rialto_testbed::rialto_bin(),
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
    let (status, summary) = rialto.terminate();
    assert!(status.success(), "rialto stopped with {status}: {summary}");
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
