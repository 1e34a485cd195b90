//! Health checks on the cross-cluster testbed (`testbed/topology.sh`): real
//! HTTP servers in the pods, checked through the kernel's own VXLAN
//! gateways, and a real client sending requests all along. The testbed's
//! config checks the web service's pods every 500 ms, two results in a row
//! to change state: detection is due within fall × interval + 1 s = 2 s.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rialto_testbed::{Rialto, Topology, Within, echo_servers, http_get, in_netns, ip};

const BIN: &str = env!("CARGO_BIN_EXE_rialto");
const WEB: &str = "198.18.100.1:80";
const EAST_P1: (&str, &str) = ("east", "198.19.0.10:80");
const EAST_P2: (&str, &str) = ("east", "198.19.0.11:80");
const WEST_P1: (&str, &str) = ("west", "198.19.0.10:80");
const WEST_P2: (&str, &str) = ("west", "198.19.0.11:80");
/// The testbed's checks: every 500 ms, 2 in a row to fall.
const INTERVAL: Duration = Duration::from_millis(500);
const FALL: u32 = 2;
/// Within this of a failure no new request may go to the failed backend;
/// within this of its recovery, it serves again.
const DETECTION: Duration = Duration::from_millis(500 * 2 + 1000);

/// Rialto on the border node with `config`, written to a file removed at
/// the end.
struct Border {
    rialto: Rialto,
    config: std::path::PathBuf,
    ns: String,
}

impl Border {
    fn start(topology: &Topology, config: &str) -> Self {
        let path = std::env::temp_dir().join(format!("rialto-health-{}.toml", topology.name));
        std::fs::write(&path, config).unwrap();
        let ns = topology.ns("border");
        let rialto = Rialto::start(
            BIN,
            &ns,
            &["--iface", "up0", "--config", path.to_str().unwrap()],
        );
        Self {
            rialto,
            config: path,
            ns,
        }
    }

    /// `GET /api/v1/{what}`.
    fn api(&self, what: &str) -> serde_json::Value {
        rialto_testbed::api_json(&self.ns, &format!("/api/v1/{what}"))
    }

    fn services(&self) -> serde_json::Value {
        self.api("services")
    }

    fn status(&self) -> serde_json::Value {
        self.api("status")
    }

    /// The backend (cluster, address) of `service` as the API shows it.
    fn backend(&self, service: &str, (cluster, addr): (&str, &str)) -> serde_json::Value {
        let services = self.services();
        let found = (services.as_array().unwrap().iter())
            .find(|s| s["name"] == service)
            .and_then(|s| {
                (s["backends"].as_array().unwrap().iter())
                    .find(|b| b["cluster"] == cluster && b["addr"] == addr)
            });
        found
            .unwrap_or_else(|| panic!("no backend {cluster} {addr} of {service}: {services}"))
            .clone()
    }

    /// Whether new flows may go to the web backend.
    fn selected(&self, backend: (&str, &str)) -> bool {
        self.backend("web", backend)["selected"] == true
    }

    /// Waits, within `timeout`, until `done`; how long it took.
    fn wait(&self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) -> Duration {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < timeout,
                "{what}: not within {timeout:?}; services: {}",
                self.services()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }

    /// Waits until every web backend has passed a check.
    fn all_checked(&self) {
        self.wait("every web backend checked", Duration::from_secs(10), |b| {
            [EAST_P1, EAST_P2, WEST_P1, WEST_P2]
                .iter()
                .all(|&k| b.backend("web", k)["health"]["last"] == "ok")
        });
    }

    fn stop(self) -> serde_json::Value {
        let (status, summary) = self.rialto.terminate();
        let _ = std::fs::remove_file(&self.config);
        assert!(status.success(), "{summary}");
        summary
    }
}

/// A request every 20 ms from the client to a VIP, each on a connection of
/// its own, until stopped: when each was sent, and its answer (the pod
/// that answered) or why there was none.
struct Requests {
    stop: Arc<AtomicBool>,
    started: Instant,
    handle: JoinHandle<Vec<(Duration, Result<String, String>)>>,
}

impl Requests {
    fn start(topology: &Topology, vip: &str) -> Self {
        let (ns, to): (String, SocketAddr) = (topology.ns("client"), vip.parse().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let running = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut results = Vec::new();
            while !running.load(Ordering::Relaxed) {
                let at = started.elapsed();
                let answer = http_get(&ns, to, Duration::from_secs(2)).map_err(|e| e.to_string());
                results.push((at, answer));
                std::thread::sleep(Duration::from_millis(20));
            }
            results
        });
        Self {
            stop,
            started,
            handle,
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn stop(self) -> Answers {
        self.stop.store(true, Ordering::Relaxed);
        Answers(self.handle.join().expect("the requests' thread"))
    }
}

/// The requests sent, with their answers.
struct Answers(Vec<(Duration, Result<String, String>)>);

impl Answers {
    /// Those sent from `from` until `to`.
    fn between(&self, from: Duration, to: Duration) -> Vec<&Result<String, String>> {
        (self.0.iter())
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, r)| r)
            .collect()
    }
}

/// "p1 in cluster east (198.19.0.10)" is east's pod 1, and so on.
fn answered_by(answer: &Result<String, String>, (cluster, addr): (&str, &str)) -> bool {
    let pod = if addr.starts_with("198.19.0.10") {
        "p1"
    } else {
        "p2"
    };
    answer
        .as_ref()
        .is_ok_and(|a| a.starts_with(&format!("{pod} in cluster {cluster} ")))
}

#[test]
fn a_stopped_pod_or_a_dead_gateway_takes_no_new_flow_and_comes_back() {
    let _alone = rialto_testbed::alone();
    let topology = Topology::up(2);
    let border = Border::start(&topology, &topology.config());
    border.all_checked();
    let requests = Requests::start(&topology, WEB);
    std::thread::sleep(Duration::from_secs(1));

    // East's pod 1 stops serving: its port refuses connections.
    let stopped = requests.elapsed();
    topology.http("east-p1", false);
    let out = border.wait("east-p1 taken out", Duration::from_secs(5), |b| {
        !b.selected(EAST_P1)
    });
    let health = border.backend("web", EAST_P1)["health"].clone();
    println!("a pod's server stopped: out after {out:?} ({health})");
    // Visible: the metrics, and `rialto stats`.
    let metrics = rialto_testbed::api_text(&border.ns, "/metrics");
    let labels = r#"{service="web",cluster="east",addr="198.19.0.10:80"}"#;
    for line in [
        format!("rialto_backend_up{labels} 0"),
        format!("rialto_backend_selected{labels} 0"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let stats = rialto_testbed::netns_command(&border.ns, BIN)
        .args(["stats", "--count", "1", "--interval", "0.2"])
        .output_by(Duration::from_secs(10));
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.contains("backends down:\n  web east 198.19.0.10:80: refused"),
        "{stats}"
    );
    std::thread::sleep(DETECTION + Duration::from_secs(1));
    let stopped_until = requests.elapsed();
    topology.http("east-p1", true);
    // Listening again from here.
    let started = requests.elapsed();
    let back = border.wait("east-p1 back", Duration::from_secs(5), |b| {
        b.selected(EAST_P1)
    });
    let pod_back = requests.elapsed();
    println!("started again: back after {back:?}");
    std::thread::sleep(DETECTION);

    // East's gateway loses its link: nothing of east answers.
    let cut = requests.elapsed();
    ip(&topology.ns("east"), "link set eth0 down");
    let out = border.wait("east taken out", Duration::from_secs(5), |b| {
        !b.selected(EAST_P1) && !b.selected(EAST_P2)
    });
    println!("east's gateway down: out after {out:?}");
    std::thread::sleep(DETECTION + Duration::from_secs(1));
    let mended = requests.elapsed();
    ip(&topology.ns("east"), "link set eth0 up");
    ip(
        &topology.ns("east"),
        "route replace default via 198.18.2.254",
    );
    let back = border.wait("east back", Duration::from_secs(10), |b| {
        b.selected(EAST_P1) && b.selected(EAST_P2)
    });
    let east_back = requests.elapsed();
    println!("east's gateway up: back after {back:?}");
    std::thread::sleep(DETECTION);
    let answers = requests.stop();
    let summary = border.stop();

    let report = |what: &str, window: &[&Result<String, String>]| {
        format!("{what}: {} requests: {window:?}", window.len())
    };
    // After detection: every request answered, none by the stopped pod.
    let window = answers.between(stopped + DETECTION, stopped_until);
    assert!(window.len() > 20, "{}", report("pod down", &window));
    assert!(
        window.iter().all(|a| a.is_ok() && !answered_by(a, EAST_P1)),
        "{}",
        report("pod down", &window)
    );
    // Back once it rose again.
    assert!(pod_back - started <= DETECTION, "back within {DETECTION:?}");
    let window = answers.between(pod_back, cut);
    assert!(
        window.iter().any(|a| answered_by(a, EAST_P1)),
        "{}",
        report("pod back", &window)
    );
    assert!(
        window.iter().all(|a| a.is_ok()),
        "{}",
        report("pod back", &window)
    );
    // East's gateway down: every request answered by west.
    let window = answers.between(cut + FALL * INTERVAL + Duration::from_secs(1), mended);
    assert!(window.len() > 20, "{}", report("east down", &window));
    assert!(
        window
            .iter()
            .all(|a| answered_by(a, WEST_P1) || answered_by(a, WEST_P2)),
        "{}",
        report("east down", &window)
    );
    // East back (its gateway's routes restored, its checks rising again).
    let window = answers.between(east_back, Duration::MAX);
    assert!(
        window
            .iter()
            .any(|a| answered_by(a, EAST_P1) || answered_by(a, EAST_P2)),
        "{}",
        report("east back", &window)
    );
    let checks_out = rialto_testbed::workers_total(&summary, |w| &w["check_out"]);
    let checks_in = rialto_testbed::workers_total(&summary, |w| &w["check_in"]);
    assert!(checks_out > 0 && checks_in > 0, "{summary}");
}

/// East preferred while half its backends are healthy: one of its two
/// pods down, new flows stay in east; both down, they go to west; both
/// back, to east again. Every pod down: a connection is refused at once
/// (a TCP reset from the VIP), not left to time out.
#[test]
fn graded_failover_between_clusters_and_refusal_when_none_is_left() {
    let _alone = rialto_testbed::alone();
    let topology = Topology::up(2);
    let config = topology.config().replace(
        "check = { kind = \"http\"",
        "prefer = [\"east\"]\nmin_healthy = 0.5\ncheck = { kind = \"http\"",
    );
    assert!(config.contains("min_healthy = 0.5"), "{config}");
    let border = Border::start(&topology, &config);
    border.all_checked();
    let sample = |what: &str, allowed: &[(&str, &str)]| {
        let client = topology.ns("client");
        for _ in 0..20 {
            let answer = http_get(&client, WEB.parse().unwrap(), Duration::from_secs(2))
                .map_err(|e| e.to_string());
            assert!(
                allowed.iter().any(|&b| answered_by(&answer, b)),
                "{what}: answered {answer:?}, expected one of {allowed:?}"
            );
        }
    };
    sample("all healthy", &[EAST_P1, EAST_P2]);

    topology.http("east-p1", false);
    border.wait("east-p1 out", DETECTION * 2, |b| !b.selected(EAST_P1));
    sample("one of east's two down", &[EAST_P2]);

    topology.http("east-p2", false);
    border.wait("east-p2 out", DETECTION * 2, |b| !b.selected(EAST_P2));
    assert!(border.selected(WEST_P1) && border.selected(WEST_P2));
    sample("both of east's down", &[WEST_P1, WEST_P2]);

    topology.http("east-p1", true);
    topology.http("east-p2", true);
    border.wait("east back, west out", DETECTION * 2, |b| {
        b.selected(EAST_P1) && b.selected(EAST_P2) && !b.selected(WEST_P1)
    });
    sample("east back", &[EAST_P1, EAST_P2]);

    for pod in ["east-p1", "east-p2", "west-p1", "west-p2"] {
        topology.http(pod, false);
    }
    border.wait("every pod out", DETECTION * 2, |b| {
        let services = b.services();
        services[0]["name"] == "web" && services[0]["serving"] == false
    });
    let begun = Instant::now();
    let refused = http_get(
        &topology.ns("client"),
        WEB.parse().unwrap(),
        Duration::from_secs(5),
    );
    let took = begun.elapsed();
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    assert!(took < Duration::from_secs(1), "refused at once: {took:?}");
    let refusals =
        rialto_testbed::workers_total(&border.status(), |w| &w["balance"]["no_backend_refused"]);
    assert!(refusals >= 1, "counted: {}", border.status());
    border.stop();
}

/// A Kubernetes import file rewritten on disk, one endpoint no longer
/// ready: without a signal, that pod takes no new flow. A broken file
/// written next is refused, and the running config stays.
#[test]
fn an_import_file_rewritten_on_disk_is_followed() {
    let _alone = rialto_testbed::alone();
    let topology = Topology::up(1);
    let dir = std::env::temp_dir().join(format!("rialto-import-{}", topology.name));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = dir.join("web.yaml");
    std::fs::write(&yaml, import(true)).unwrap();
    let config = format!("{}\n[[import]]\nfile = \"web.yaml\"\n", topology.config());
    let path = dir.join("border.toml");
    std::fs::write(&path, config).unwrap();
    let rialto = Rialto::start(
        BIN,
        &topology.ns("border"),
        &["--iface", "up0", "--config", path.to_str().unwrap()],
    );
    let vip: SocketAddr = "198.18.100.5:80".parse().unwrap();
    let client = topology.ns("client");
    let answers = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| http_get(&client, vip, Duration::from_secs(2)).expect("answered"))
            .collect()
    };
    assert!(
        answers(40)
            .iter()
            .any(|a| a.starts_with("p1 in cluster east "))
    );

    // Written elsewhere and renamed over, as a controller does.
    let staged = dir.join("web.yaml.new");
    std::fs::write(&staged, import(false)).unwrap();
    std::fs::rename(&staged, &yaml).unwrap();
    rialto.wait_for_log("an imported file changed: reloaded", Duration::from_secs(5));
    let after = answers(40);
    assert!(
        after.iter().all(|a| !a.starts_with("p1 in cluster east ")),
        "{after:?}"
    );

    std::fs::write(&yaml, "apiVersion: v1\nitems: [\n").unwrap();
    let line = rialto.wait_for_log("reload rejected", Duration::from_secs(5));
    assert!(line.contains("web.yaml"), "{line}");
    assert_eq!(answers(10).len(), 10, "served on");
    let (status, summary) = rialto.terminate();
    assert!(status.success(), "{summary}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A ServiceImport of web on 198.18.100.5 and the EndpointSlices of both
/// clusters; east's pod 1 ready or not.
fn import(east_p1_ready: bool) -> String {
    let slice = |cluster: &str, first_ready: bool| {
        format!(
            r#"
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  addressType: IPv4
  metadata:
    name: imported-web-{cluster}
    namespace: shop
    labels:
      multicluster.kubernetes.io/service-name: web
      multicluster.kubernetes.io/source-cluster: {cluster}
  endpoints:
  - addresses: ["198.19.0.10"]
    conditions: {{ ready: {first_ready}, serving: {first_ready} }}
  - addresses: ["198.19.0.11"]
    conditions: {{ ready: true }}
  ports:
  - name: http
    port: 80
    protocol: TCP"#
        )
    };
    format!(
        r#"apiVersion: v1
kind: List
items:
- apiVersion: multicluster.x-k8s.io/v1alpha1
  kind: ServiceImport
  metadata:
    name: web
    namespace: shop
  spec:
    ips: ["198.18.100.5"]
    ports:
    - name: http
      port: 80
      protocol: TCP
    type: ClusterSetIP{}{}
"#,
        slice("east", east_p1_ready),
        slice("west", true)
    )
}

/// A service that resets the connections of a failed backend: its echo
/// connections, each making a round trip a second, end with a reset once
/// the pod fails its checks (its HTTP server stopped, checked on port 80);
/// without the option they would be kept.
#[test]
fn the_connections_of_a_failed_backend_are_reset_where_the_service_says_so() {
    use std::io::{Read, Write};
    let _alone = rialto_testbed::alone();
    let topology = Topology::up(1);
    echo_servers(&topology.ns("east-p1"), "198.19.0.10:7".parse().unwrap());
    let config = topology.config()
        + r#"
[[service]]
name = "echo"
vip = "198.18.100.4:7/TCP"
backends = [{ cluster = "east", addr = "198.19.0.10:7" }]
check = { kind = "http", port = 80, interval_ms = 500, timeout_ms = 400, rise = 2, fall = 2 }
reset_on_down = true
"#;
    let border = Border::start(&topology, &config);
    border.wait("echo's backend checked", Duration::from_secs(10), |b| {
        b.backend("echo", EAST_P1_ECHO)["health"]["last"] == "ok"
    });
    let vip: SocketAddr = "198.18.100.4:7".parse().unwrap();
    let mut connections: Vec<std::net::TcpStream> = in_netns(&topology.ns("client"), || {
        (0..4)
            .map(|_| std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5)).unwrap())
            .collect()
    });
    let round_trip = |c: &mut std::net::TcpStream| -> std::io::Result<()> {
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        c.write_all(b"ping")?;
        let mut back = [0u8; 4];
        c.read_exact(&mut back)
    };
    for c in &mut connections {
        round_trip(c).expect("the echo answers");
    }
    topology.http("east-p1", false);
    // Out of the tables the workers run on, not only out of the checker's
    // board: `selected` is read from the published tables.
    border.wait("echo's backend out", DETECTION * 2, |b| {
        b.backend("echo", EAST_P1_ECHO)["selected"] == false
    });
    // The next segment of each is answered with a reset.
    for c in &mut connections {
        let error = round_trip(c).expect_err("reset");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    }
    let resets =
        rialto_testbed::workers_total(&border.status(), |w| &w["balance"]["reset_on_down"]);
    assert_eq!(resets, 4, "{}", border.status());
    border.stop();
}

const EAST_P1_ECHO: (&str, &str) = ("east", "198.19.0.10:7");
