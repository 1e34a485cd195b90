//! Every validation error, from a bad file: `tests/bad/NAME.toml` (the
//! example config with one mistake, named in its first line) must be
//! rejected with exactly the lines of `tests/bad/NAME.err`.

use std::path::Path;

#[test]
fn the_example_config_is_accepted() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("example.toml"))
        .unwrap();
    let snapshot = rialto_rules::load("example.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.services.len(), 3);
    assert_eq!(snapshot.clusters.len(), 2);
}

#[test]
fn each_bad_file_gets_exactly_its_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".toml").map(str::to_owned)
        })
        .collect();
    names.sort();
    // Every bad file has its expected messages, and none is missing.
    let errs = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "err")
        })
        .count();
    assert_eq!(errs, names.len(), "a .err per .toml: {names:?}");
    assert_eq!(names.len(), 43, "the bad files: {names:?}");
    let mut failures = Vec::new();
    for name in &names {
        let text = std::fs::read_to_string(dir.join(format!("{name}.toml"))).unwrap();
        let expected = std::fs::read_to_string(dir.join(format!("{name}.err")))
            .unwrap_or_else(|e| panic!("{name}.err: {e}"));
        match rialto_rules::load(&format!("bad/{name}.toml"), &text) {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(rejected) => {
                let actual = format!("{rejected}\n");
                if actual != expected {
                    failures.push(format!("{name}:\nexpected\n{expected}got\n{actual}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
