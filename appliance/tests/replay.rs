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
use rialto::{fixtures, pipeline::Verdict};
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
    let out = cmd.output().expect("rialto runs");
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
        .output()
        .expect("tshark is installed (setup.sh installs it)");
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
        .output()
        .expect("tshark runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn fixture_outputs_pass_tshark_checksum_validation() {
    let dir = Scratch::new("fixtures");
    let table = fixtures::table();
    let config = dir.path("fixtures.toml");
    std::fs::write(&config, fixtures::CONFIG).unwrap();
    let inputs: Vec<_> = table.iter().map(|f| f.input.clone()).collect();
    write_pcap(&dir.path("in.pcap"), &inputs);

    let summary = replay(&config, &dir.path("in.pcap"), &dir.path("out.pcap"), false);
    let expected_tx = table.iter().filter(|f| f.verdict == Verdict::Tx).count();
    assert_eq!(summary["frames"], table.len());
    assert_eq!(summary["tx"], expected_tx, "{summary}");

    // The binary's output is the table's expected output, frame for frame.
    let expected: Vec<_> = table.iter().filter_map(|f| f.output.clone()).collect();
    assert_eq!(read_pcap(&dir.path("out.pcap")), expected);

    let complaints = tshark_complaints(&dir.path("out.pcap"));
    assert!(
        complaints.is_empty(),
        "tshark complains about:\n{}",
        complaints.join("\n")
    );
    let stacks = tshark_stacks(&dir.path("out.pcap"));
    assert_eq!(stacks.len(), expected_tx);
    let vxlan = stacks.iter().filter(|s| s.contains(":vxlan:")).count();
    assert!(
        vxlan >= 6,
        "tshark decodes the encapsulated frames as VXLAN: {stacks:#?}"
    );
    // A broken checksum is caught: the oracle can fail.
    let mut broken = expected[0].clone();
    let last = broken.len() - 1;
    broken[last - 30] ^= 0xff;
    write_pcap(&dir.path("broken.pcap"), &[broken]);
    assert_eq!(
        tshark_complaints(&dir.path("broken.pcap")).len(),
        1,
        "tshark sees a corrupted frame"
    );
}
