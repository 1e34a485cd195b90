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
    assert_eq!(names.len(), 62, "the bad files: {names:?}");
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

/// More VIPs, gateways and SNAT addresses than the XDP program's maps hold,
/// each refused at its field (a generated config: the files would be
/// large).
#[test]
fn more_than_the_xdp_maps_hold_is_refused() {
    use rialto_rules::steering_capacity::{PEERS, SNAT_ADDRESSES, VIPS};
    let addr = |base: u8, i: usize| format!("\"198.{base}.{}.{}\"", i / 250, 1 + i % 250);
    let list = |base, n| (0..n).map(|i| addr(base, i)).collect::<Vec<_>>().join(", ");
    let mut text = format!(
        "[node]\nvteps = [\"198.18.255.1\"]\nnext_hop_mac = \"02:00:00:00:00:fe\"\n\
         [snat]\naddresses = [{}]\n\
         [[cluster]]\nname = \"east\"\nvni = 100\ngateways = [{}]\n\
         gateway_mac = \"02:00:00:00:02:01\"\n",
        list(19, SNAT_ADDRESSES + 1),
        list(18, PEERS + 1),
    );
    for i in 0..=VIPS {
        let (port, proto) = (1 + i % 65535, if i < 65535 { "TCP" } else { "UDP" });
        text += &format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"198.18.254.1:{port}/{proto}\"\n\
             table_size = 251\nbackends = [{{ cluster = \"east\", addr = \"198.18.253.1:80\" }}]\n"
        );
    }
    let rejected = rialto_rules::load("many.toml", &text)
        .unwrap_err()
        .to_string();
    for expected in [
        format!(
            "service: {} VIPs, but the XDP program holds {VIPS} at most",
            VIPS + 1
        ),
        format!(
            "cluster: gateways: {} gateways, but the XDP program holds {PEERS} at most",
            PEERS + 1
        ),
        format!(
            "snat.addresses: {} addresses, but the XDP program holds {SNAT_ADDRESSES} at most",
            SNAT_ADDRESSES + 1
        ),
    ] {
        assert!(
            rejected.lines().any(|l| l.ends_with(&expected)),
            "{expected:?} in:\n{rejected}"
        );
    }
}
