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

#[test]
fn import_problems_name_the_file_and_line() {
    let missing = border().replace("web.yaml", "nosuch.yaml");
    let e = load("border.toml", &missing).unwrap_err();
    assert!(e.starts_with("nosuch.yaml:0:0: cannot read it: "), "{e}");

    let unknown = border().replace("name = \"west\"", "name = \"north\"");
    let e = load("border.toml", &unknown).unwrap_err();
    assert_eq!(
        e,
        "border.toml:22:8: service \"shop/web:80\": backends: 198.19.0.21:8080 is in unknown cluster \"west\""
    );
}
