//! Every input the fuzzer kept (`appliance/fuzz/corpus/pipeline`, seeds and
//! what it grew from them) runs through the fuzz target's body again: the
//! invariants of `rialto_fixtures::fuzzing` hold for all of them.

use std::path::Path;

#[test]
fn the_fuzz_corpus_replays_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/pipeline");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    let seeds = inputs
        .iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
        })
        .count();
    assert_eq!(seeds, 10, "the fixture table and the nine corpus captures");
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| rialto_fixtures::fuzzing::run(&data));
        assert!(outcome.is_ok(), "{} breaks an invariant", path.display());
    }
    println!("{} inputs replayed", inputs.len());
}
