//! Writes the fuzz target's seed corpus: the fixture table as one input,
//! and each capture of `../shared/corpus/zeek-tunnels` as one input.
//!
//! `cargo run --bin seed -- CORPUS_DIR OUT_DIR`

use std::{fs, path::Path};

use pcap_file::pcap::PcapReader;
use rialto_fixtures::{self as fixtures, fuzzing};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [captures, out] = args.as_slice() else {
        eprintln!("usage: seed CORPUS_DIR OUT_DIR");
        std::process::exit(2);
    };
    let out = Path::new(out);
    fs::create_dir_all(out).expect("the output directory can be made");
    let table: Vec<_> = fixtures::table().into_iter().map(|f| f.input).collect();
    fs::write(out.join("seed-fixture-table"), fuzzing::encode(&table)).unwrap();
    let mut entries: Vec<_> = fs::read_dir(captures)
        .unwrap_or_else(|e| panic!("cannot read {captures}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    entries.sort();
    for path in entries {
        let mut reader = PcapReader::new(fs::File::open(&path).unwrap()).unwrap();
        let mut frames = Vec::new();
        // Raw records: captures cut short by their snap length are kept.
        while let Some(packet) = reader.next_raw_packet() {
            frames.push(packet.unwrap().data.into_owned());
        }
        let name = path.file_stem().unwrap().to_string_lossy();
        fs::write(out.join(format!("seed-{name}")), fuzzing::encode(&frames)).unwrap();
        println!("{name}: {} frames", frames.len());
    }
}
