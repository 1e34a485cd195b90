//! Kubernetes ServiceImports through the config: the services and backends
//! they become, and the errors of a bad import.

use std::path::Path;

use rialto_rules::config::BackendState;

fn load(config: &str, text: &str) -> Result<rialto_rules::Snapshot, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/k8s")
        .join(config);
    rialto_rules::load(path.to_str().unwrap(), text).map_err(|e| {
        e.to_string()
            .replace(&format!("{}/", path.parent().unwrap().display()), "")
    })
}

fn border() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s/border.toml"))
        .unwrap()
}

#[test]
fn a_service_import_and_its_endpoint_slices_become_a_service() {
    let snapshot = load("border.toml", &border()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.services.len(), 1);
    let web = &snapshot.services[0];
    assert_eq!(web.name, "shop/web:80");
    assert_eq!(web.vip.to_string(), "198.18.100.10:80/TCP");
    let backends: Vec<(String, String, BackendState)> = web
        .backends
        .iter()
        .map(|b| {
            let cluster = snapshot.clusters[usize::from(b.cluster)].name.clone();
            (cluster, b.addr.to_string(), b.state)
        })
        .collect();
    // Ready: active. Serving but terminating: draining. Not serving: left out.
    // The same pod address in two clusters is two backends.
    assert_eq!(
        backends,
        [
            (
                "east".into(),
                "198.19.0.21:8080".into(),
                BackendState::Active
            ),
            (
                "east".into(),
                "198.19.0.22:8080".into(),
                BackendState::Draining
            ),
            (
                "west".into(),
                "198.19.0.21:8080".into(),
                BackendState::Active
            ),
        ]
    );
    assert!(snapshot.vips.contains_key(&web.vip));
}

/// An import's problem is placed at its `file =` in the config, and names
/// the place in the imported file when there is one.
#[test]
fn import_problems_name_the_file_and_line() {
    let missing = border().replace("web.yaml", "nosuch.yaml");
    let e = load("border.toml", &missing).unwrap_err();
    assert!(
        e.starts_with("border.toml:22:8: import: nosuch.yaml: cannot read it: "),
        "{e}"
    );

    let dir = std::env::temp_dir().join(format!("rialto-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let web =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s/web.yaml"))
            .unwrap();
    let bad_yaml = web.replacen("ips:", "ips: [not-an-ip]\n  old:", 1);
    std::fs::write(dir.join("bad.yaml"), &bad_yaml).unwrap();
    let config = dir.join("border.toml");
    let text = border().replace("web.yaml", "bad.yaml");
    let e = rialto_rules::load(config.to_str().unwrap(), &text)
        .unwrap_err()
        .to_string();
    let bad = dir.join("bad.yaml");
    // 1-based, at the bad address.
    let (line, column) = bad_yaml
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("not-an-ip").map(|c| (i + 1, c + 1)))
        .unwrap();
    assert!(
        e.starts_with(&format!(
            "{}:22:8: import: {}:{line}:{column}: ",
            config.display(),
            bad.display()
        )),
        "{e}"
    );

    // Not a regular file, or too large: refused before it is read whole.
    for (file, why) in [
        ("/dev/zero", "not a regular file"),
        ("/tmp", "not a regular file"),
    ] {
        let e = load("border.toml", &border().replace("web.yaml", file)).unwrap_err();
        assert_eq!(e, format!("border.toml:22:8: import: {file}: {why}"));
    }
    let huge = dir.join("huge.yaml");
    let file = std::fs::File::create(&huge).unwrap();
    file.set_len(rialto_rules::MAX_IMPORT_BYTES + 1).unwrap();
    let e = rialto_rules::load(
        config.to_str().unwrap(),
        &border().replace("web.yaml", "huge.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.ends_with("huge.yaml: larger than 16 MiB, the most an import may be"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let unknown = border().replace("name = \"west\"", "name = \"north\"");
    let e = load("border.toml", &unknown).unwrap_err();
    assert_eq!(
        e,
        "border.toml:22:8: service \"shop/web:80\": backends: 198.19.0.21:8080 is in unknown cluster \"west\""
    );
}
