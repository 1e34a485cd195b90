//! `rialto replay`, the real binary, over the fixture table and over real
//! captures; its output decoded by an independent dissector, `tshark`, with
//! checksum validation switched on.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use rialto_dataplane::Verdict;
use rialto_fixtures as fixtures;
use rialto_testbed::Within;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rialto");

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rialto-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    /// Set RIALTO_KEEP_SCRATCH to keep the captures for Wireshark.
    fn drop(&mut self) {
        if std::env::var_os("RIALTO_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut writer = PcapWriter::new(File::create(path).unwrap()).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        let ts = Duration::from_secs(1) + Duration::from_millis(i as u64);
        writer
            .write_packet(&PcapPacket::new(ts, frame.len() as u32, frame))
            .unwrap();
    }
}

fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let mut reader = PcapReader::new(File::open(path).unwrap()).unwrap();
    let mut frames = Vec::new();
    while let Some(p) = reader.next_packet() {
        frames.push(p.unwrap().data.into_owned());
    }
    frames
}

/// Runs `rialto replay`; returns its JSON summary.
fn replay(config: &Path, input: &Path, output: &Path, decap: bool) -> Value {
    let mut cmd = Command::new(BIN);
    cmd.arg("replay")
        .arg("--config")
        .arg(config)
        .arg("--in")
        .arg(input)
        .arg("--out")
        .arg(output);
    if decap {
        cmd.arg("--decap");
    }
    let out = cmd.output_by(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rialto replay failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

/// Frames `tshark` finds malformed or with a bad checksum, one line each.
///
/// The transport checksum of a packet quoted in an ICMP error is not
/// judged: the quote is cut short, and tshark sums what is there anyway.
/// (The fixture table checks those quotes byte for byte.)
fn tshark_complaints(pcap: &Path) -> Vec<String> {
    let filter = "_ws.malformed || ip.checksum.status == 0 \
                  || icmp.checksum.status == 0 || icmpv6.checksum.status == 0 \
                  || (!icmp && !icmpv6 && (_ws.expert.severity == error \
                      || udp.checksum.status == 0 || tcp.checksum.status == 0))";
    let out = Command::new("tshark")
        .args([
            "-n",
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ])
        .args(["-o", "tcp.check_checksum:TRUE", "-r"])
        .arg(pcap)
        .args([
            "-Y",
            filter,
            "-T",
            "fields",
            "-e",
            "frame.number",
            "-e",
            "_ws.col.Info",
        ])
        .args(["-e", "_ws.expert.message", "-E", "separator=|"])
        .output_by(Duration::from_secs(60));
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// How many frames `tshark` reads, and with what protocol stack.
fn tshark_stacks(pcap: &Path) -> Vec<String> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args(["-T", "fields", "-e", "frame.protocols"])
        .output_by(Duration::from_secs(60));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes a suite's steps as a capture, each at its time, in order.
fn write_steps(path: &Path, steps: &[fixtures::Fixture]) {
    let mut writer = PcapWriter::new(File::create(path).unwrap()).unwrap();
    for (i, step) in steps.iter().enumerate() {
        let ts = Duration::from_secs(step.at) + Duration::from_micros(i as u64);
        writer
            .write_packet(&PcapPacket::new(ts, step.input.len() as u32, &step.input))
            .unwrap();
    }
}

/// Every suite `rialto replay` can run (one worker, the usual headroom),
/// through the real binary: exactly the expected frames out, and `tshark`
/// finds no bad checksum and no malformed packet in them.
#[test]
fn fixture_outputs_pass_tshark_checksum_validation() {
    let dir = Scratch::new("fixtures");
    let mut all = Vec::new();
    let mut replayed = 0;
    for suite in fixtures::suites() {
        let Some(steps) = suite.replay_steps() else {
            continue;
        };
        let config = dir.path("suite.toml");
        std::fs::write(&config, &suite.config).unwrap();
        write_steps(&dir.path("in.pcap"), &steps);
        let summary = replay(&config, &dir.path("in.pcap"), &dir.path("out.pcap"), false);
        let expected: Vec<_> = (steps.iter())
            .filter(|f| f.verdict == Verdict::Tx)
            .filter_map(|f| f.output.clone())
            .collect();
        assert_eq!(summary["frames"], steps.len(), "{}: {summary}", suite.name);
        assert_eq!(summary["tx"], expected.len(), "{}: {summary}", suite.name);
        // The binary's output is the suite's expected output, frame for frame.
        assert_eq!(read_pcap(&dir.path("out.pcap")), expected, "{}", suite.name);
        all.extend(expected);
        replayed += 1;
    }
    assert!(replayed >= 3, "the main suite and the small ones");
    write_pcap(&dir.path("all.pcap"), &all);
    let complaints = tshark_complaints(&dir.path("all.pcap"));
    assert!(
        complaints.is_empty(),
        "tshark complains about:\n{}",
        complaints.join("\n")
    );
    let stacks = tshark_stacks(&dir.path("all.pcap"));
    assert_eq!(stacks.len(), all.len());
    // As many as etherparse (through the fixtures' decoder) finds.
    let encapsulated = all
        .iter()
        .filter(|f| fixtures::layers(f).iter().any(|l| l.starts_with("VXLAN")))
        .count();
    let vxlan = stacks.iter().filter(|s| s.contains(":vxlan:")).count();
    assert!(encapsulated >= 10, "the suites send VXLAN");
    assert_eq!(
        vxlan, encapsulated,
        "tshark decodes the encapsulated frames as VXLAN: {stacks:#?}"
    );
    // A broken checksum is caught: the oracle can fail.
    let mut broken = all[0].clone();
    let last = broken.len() - 1;
    broken[last - 30] ^= 0xff;
    write_pcap(&dir.path("broken.pcap"), &[broken]);
    assert_eq!(
        tshark_complaints(&dir.path("broken.pcap")).len(),
        1,
        "tshark sees a corrupted frame"
    );
}

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/corpus/zeek-tunnels"
);

/// A config with `vtep` as Rialto's VTEP and one cluster whose gateways
/// are `peers`, with `vni`.
fn corpus_config(dir: &Scratch, vtep: &str, peers: &[&str], vni: u32) -> PathBuf {
    let gateways: Vec<_> = peers.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        r#"
        [node]
        vteps = ["{vtep}"]
        next_hop_mac = "02:00:00:00:00:fe"
        [snat]
        addresses = ["198.18.200.1"]
        [[cluster]]
        name = "capture"
        vni = {vni}
        gateways = [{}]
        gateway_mac = "02:00:00:00:02:01"
        "#,
        gateways.join(", ")
    );
    let path = dir.path("corpus.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn corpus(file: &str) -> PathBuf {
    let path = Path::new(CORPUS).join(file);
    assert!(
        path.exists(),
        "{} is missing: the corpus lives in ../shared beside the repository",
        path.display()
    );
    path
}

/// `vxlan.pcap` decapsulated: exactly the inner IPv4 headers Zeek's
/// baseline lists (id, DF, TTL, header checksum, addresses), in order.
#[test]
fn vxlan_capture_decapsulates_to_zeeks_inner_packets() {
    let dir = Scratch::new("corpus-vxlan");
    // Both directions are decapsulated (--decap does not ask which VTEP a
    // capture's VXLAN was sent to), as Zeek's baseline has them.
    let config = corpus_config(&dir, "198.18.1.1", &["192.168.56.11", "192.168.56.12"], 123);
    let summary = replay(
        &config,
        &corpus("vxlan.pcap"),
        &dir.path("inner.pcap"),
        true,
    );
    assert_eq!(
        (summary["frames"].as_u64(), summary["tx"].as_u64()),
        (Some(10), Some(10)),
        "{summary}"
    );

    let baseline =
        std::fs::read_to_string(Path::new(CORPUS).join("baselines/core.tunnels.vxlan.out"))
            .unwrap();
    let field = |line: &str, name: &str| -> String {
        let start = line
            .find(&format!(" {name}="))
            .unwrap_or_else(|| panic!("{name} in {line}"))
            + name.len()
            + 2;
        line[start..].split([',', ']']).next().unwrap().to_owned()
    };
    let expected: Vec<String> = baseline
        .lines()
        .filter(|l| l.starts_with("vxlan_packet"))
        .map(|l| {
            let ip = &l[l.find("[ip=[").unwrap()..];
            let df = field(ip, "DF") == "T";
            format!(
                "id={} df={df} ttl={} sum={} {}->{}",
                field(ip, "id"),
                field(ip, "ttl"),
                field(ip, "sum"),
                field(ip, "src"),
                field(ip, "dst")
            )
        })
        .collect();
    assert_eq!(
        expected.len(),
        8,
        "Zeek's baseline lists the 8 ICMP packets"
    );
    let actual: Vec<String> = read_pcap(&dir.path("inner.pcap"))
        .iter()
        .filter_map(|frame| {
            let packet = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
            let Some(etherparse::NetSlice::Ipv4(ip)) = packet.net else {
                return None;
            };
            let h = ip.header();
            Some(format!(
                "id={} df={} ttl={} sum={} {}->{}",
                h.identification(),
                h.dont_fragment(),
                h.ttl(),
                h.header_checksum(),
                h.source_addr(),
                h.destination_addr()
            ))
        })
        .collect();
    assert_eq!(actual, expected);
}

/// Every capture of the corpus, through the whole balancer and through
/// decapsulation alone: what each odd case becomes, never a panic.
#[test]
fn corpus_captures_are_handled_as_documented() {
    // (capture, Rialto's VTEP, tunnel peers, VNI, frames transmitted by
    // --decap, drops of the whole balancer, which has no VIP for any of them)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a [&'a str],
        u32,
        u64,
        &'a [(&'a str, u64)],
    );
    let cases: &[Case] = &[
        // From .11 to Rialto, .12: inner ARP is not IP, inner ICMP echo is to
        // no VIP. From .12, Rialto's own VTEP, to .11: no peer of Rialto's.
        (
            "vxlan.pcap",
            "192.168.56.12",
            &["192.168.56.11"],
            123,
            5,
            &[("not_ip", 1), ("not_owned", 4), ("unknown_peer", 5)],
        ),
        (
            "vxlan-encapsulated-http.pcap",
            "10.1.1.172",
            &["10.1.200.131"],
            1,
            12,
            &[("not_owned", 12)],
        ),
        // Inner checksums are the end hosts' business: passed on as they are.
        (
            "vxlan-inner-tcp-bad-checksum.pcap",
            "192.168.1.2",
            &["192.168.1.1"],
            42,
            1,
            &[("not_owned", 1)],
        ),
        // The outer UDP checksum is not verified (RFC 7348 §5: MAY); the
        // inner IGMP goes to a multicast group, no VIP.
        (
            "vxlan-encapsulated-igmp-v2.pcap",
            "172.30.0.2",
            &["172.30.0.1"],
            4242,
            3,
            &[("not_owned", 3)],
        ),
        // One layer is decapsulated; the VXLAN inside is UDP to no VIP.
        (
            "vxlan-triple-v2.pcap",
            "1.1.1.9",
            &["1.1.1.1"],
            1,
            1,
            &[("not_owned", 1)],
        ),
        // Cut short by the capture: the IP lengths do not fit.
        (
            "geneve-vxlan-dns-truncated.pcap",
            "198.18.1.1",
            &["198.18.2.1"],
            4242,
            0,
            &[("malformed_ipv4", 2)],
        ),
        // Geneve and IP-in-IP are not VXLAN.
        (
            "geneve.pcap",
            "198.18.1.1",
            &["20.0.0.1", "20.0.0.2"],
            1,
            0,
            &[("not_owned", 6)],
        ),
        (
            "4in4.pcap",
            "198.18.1.1",
            &["1.2.3.4"],
            1,
            0,
            &[("not_owned", 1)],
        ),
        (
            "4in6.pcap",
            "198.18.1.1",
            &["1.2.3.4"],
            1,
            0,
            &[("not_owned", 1)],
        ),
    ];
    let dir = Scratch::new("corpus-all");
    let mut failures = Vec::new();
    for &(file, vtep, peers, vni, decap_tx, drops) in cases {
        let config = corpus_config(&dir, vtep, peers, vni);
        let frames = tshark_stacks(&corpus(file)).len() as u64;
        let decap = replay(&config, &corpus(file), &dir.path("decap.pcap"), true);
        let whole = replay(&config, &corpus(file), &dir.path("whole.pcap"), false);
        let expected_drops: serde_json::Map<_, _> = drops
            .iter()
            .map(|&(r, n)| (r.to_owned(), Value::from(n)))
            .collect();
        if decap["frames"] != frames || decap["tx"] != decap_tx {
            failures.push(format!(
                "{file} --decap: {decap}, expected {frames} frames, {decap_tx} transmitted"
            ));
        }
        if whole["tx"] != 0 || whole["drops"] != Value::Object(expected_drops) {
            failures.push(format!("{file}: {whole}, expected drops {drops:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `rialto replay` runs with a capture's timestamps, so the flow table's
/// events are the live ones: more SYNs than the table holds evict, and the
/// summary says how many, as the live summary does.
#[test]
fn replay_reports_the_flow_tables_events() {
    use fixtures::{Ip, L4};
    let dir = Scratch::new("flows");
    let config = dir.path("fixtures.toml");
    std::fs::write(&config, fixtures::CONFIG).unwrap();
    const SYNS: u32 = 20_000;
    let frames: Vec<_> = (0..SYNS)
        .map(|i| {
            let client = [198, 18, 0, 2 + (i / 50_000) as u8];
            let packet = fixtures::ip(
                Ip::V4 {
                    src: client,
                    dst: fixtures::WEB,
                    ttl: 64,
                },
                L4::Tcp(10_000 + (i % 50_000) as u16, 80, "S", 1),
                b"",
            );
            fixtures::from_router(&packet)
        })
        .collect();
    write_pcap(&dir.path("syns.pcap"), &frames);
    let summary = replay(
        &config,
        &dir.path("syns.pcap"),
        &dir.path("out.pcap"),
        false,
    );
    let flows = &summary["flows"];
    assert_eq!(summary["capacity"], 4096, "{summary}");
    assert_eq!(flows["created"], SYNS, "{summary}");
    assert_eq!(
        flows["evicted"],
        SYNS - 4096,
        "every SYN beyond the table evicts one: {summary}"
    );
    assert_eq!(flows["live"], 4096, "{summary}");
    assert_eq!(summary["tx"], SYNS, "{summary}");
}

/// A capture that ends inside a record is replayed up to it: the summary
/// of what was read, a warning, and exit status 3.
#[test]
fn a_capture_cut_mid_record_gives_the_summary_of_what_was_read() {
    let dir = Scratch::new("cut");
    let config = dir.path("fixtures.toml");
    std::fs::write(&config, fixtures::CONFIG).unwrap();
    let inputs: Vec<_> = fixtures::table().into_iter().map(|f| f.input).collect();
    write_pcap(&dir.path("whole.pcap"), &inputs);
    let whole = std::fs::read(dir.path("whole.pcap")).unwrap();
    std::fs::write(dir.path("cut.pcap"), &whole[..whole.len() - 5]).unwrap();
    let out = Command::new(BIN)
        .args(["replay", "--config"])
        .arg(&config)
        .arg("--in")
        .arg(dir.path("cut.pcap"))
        .arg("--out")
        .arg(dir.path("out.pcap"))
        .output_by(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("the summary");
    assert_eq!(summary["truncated"], true);
    assert_eq!(
        summary["frames"],
        inputs.len() - 1,
        "every whole record: {summary}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cut.pcap ends inside a record: replayed the"),
        "{stderr}"
    );
}
