//! `GET /metrics`: the status as Prometheus text, every family `rialto_*`,
//! per worker labelled by `queue`, built with the prometheus crate's types.

use prometheus::proto::{
    Bucket, Counter as PromCounter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use rialto_dataplane::pipeline::BalanceStats;

use crate::control::{ServiceStatus, Status, WorkerStatus};

/// Per backend, labelled by service, cluster and address: whether it takes
/// new flows, and what its health checks say.
fn backend_families(services: &[ServiceStatus]) -> [Family; 5] {
    let mut selected = Family::gauge(
        "backend_selected",
        "1 if new flows may go to the backend (active, healthy, in a preferred cluster while enough are healthy).",
    );
    let mut up = Family::gauge(
        "backend_up",
        "1 if the backend's health checks pass (as rise and fall count them), 0 if not; checked backends only.",
    );
    let mut latency = Family::gauge(
        "backend_check_latency_seconds",
        "How long the backend's last health check took.",
    );
    let mut checks = Family::counter("backend_checks_total", "Health checks of the backend.");
    let mut transitions = Family::counter(
        "backend_transitions_total",
        "Times the backend went down or came back, by its health checks.",
    );
    for s in services {
        for b in &s.backends {
            let addr = b.addr.to_string();
            let labels = [
                ("service", s.name.as_str()),
                ("cluster", b.cluster.as_str()),
                ("addr", addr.as_str()),
            ];
            selected.add(&labels, u64::from(b.selected));
            if let Some(h) = &b.health {
                up.add(&labels, u64::from(h.up));
                latency.add_f64(&labels, h.latency_ms / 1000.0);
                checks.add(&labels, h.checks);
                transitions.add(&labels, h.transitions);
            }
        }
    }
    [selected, up, latency, checks, transitions]
}

/// One metric family under construction.
struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut f = MetricFamily::default();
        f.set_name(format!("rialto_{name}"));
        f.set_help(help.to_owned());
        f.set_field_type(kind);
        Self(f)
    }

    fn counter(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::COUNTER)
    }

    fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::GAUGE)
    }

    fn add(&mut self, labels: &[(&str, &str)], value: u64) -> &mut Self {
        self.add_f64(labels, value as f64)
    }

    fn add_f64(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name((*k).to_owned());
                    l.set_value((*v).to_owned());
                    l
                })
                .collect(),
        );
        if self.0.get_field_type() == MetricType::COUNTER {
            let mut c = PromCounter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.0.mut_metric().push(m);
        self
    }
}

/// A metric of each worker: name (after `rialto_`), help, type, value.
type WorkerMetric = (
    &'static str,
    &'static str,
    MetricType,
    fn(&WorkerStatus) -> u64,
);

const WORKER_METRICS: [WorkerMetric; 10] = [
    (
        "worker_up",
        "1 while the worker serves its queue; 0 once it has panicked (its queue then goes to the kernel).",
        GAUGE,
        |w| u64::from(w.stats.up),
    ),
    (
        "rx_packets_total",
        "Frames received by the worker.",
        COUNTER,
        |w| w.stats.rx_packets,
    ),
    (
        "rx_bytes_total",
        "Bytes received by the worker.",
        COUNTER,
        |w| w.stats.rx_bytes,
    ),
    (
        "tx_packets_total",
        "Frames transmitted by the worker.",
        COUNTER,
        |w| w.stats.tx_packets,
    ),
    (
        "tx_bytes_total",
        "Bytes transmitted by the worker.",
        COUNTER,
        |w| w.stats.tx_bytes,
    ),
    (
        "handoff_out_total",
        "Frames handed to the worker owning their flow.",
        COUNTER,
        |w| w.stats.handoff_out,
    ),
    (
        "handoff_in_total",
        "Frames taken from other workers.",
        COUNTER,
        |w| w.stats.handoff_in,
    ),
    (
        "check_packets_in_total",
        "Health checks' answers the worker received and passed to the checker (counted in rx too).",
        COUNTER,
        |w| w.stats.check_in,
    ),
    (
        "check_packets_out_total",
        "Health checks the worker sent for the checker (counted in tx too).",
        COUNTER,
        |w| w.stats.check_out,
    ),
    (
        "tables_generation",
        "Generation of the config tables the worker runs on.",
        GAUGE,
        |w| w.generation,
    ),
];

/// A metric of each balancing worker.
type BalanceMetric = (
    &'static str,
    &'static str,
    MetricType,
    fn(&BalanceStats) -> u64,
);

const BALANCE_METRICS: [BalanceMetric; 14] = [
    (
        "forward_packets_total",
        "Packets sent toward a backend.",
        COUNTER,
        |b| b.counters.forward,
    ),
    (
        "reply_packets_total",
        "Packets sent back toward a client.",
        COUNTER,
        |b| b.counters.reply,
    ),
    (
        "icmp_time_exceeded_total",
        "ICMP time exceeded made by Rialto.",
        COUNTER,
        |b| b.counters.icmp_time_exceeded,
    ),
    (
        "icmp_too_big_total",
        "ICMP fragmentation needed / packet too big made by Rialto.",
        COUNTER,
        |b| b.counters.icmp_too_big,
    ),
    (
        "icmp_translated_total",
        "ICMP errors about a flow, translated and passed on.",
        COUNTER,
        |b| b.counters.icmp_translated,
    ),
    (
        "handed_on_packets_total",
        "Packets of a connection whose flow the worker did not have, handed on to the next \
         worker to look for it (they came in on another queue than their flow's).",
        COUNTER,
        |b| b.counters.handed_on,
    ),
    (
        "no_backend_refused_total",
        "Connection attempts to a service with no backend to take them, refused (TCP reset, ICMP port unreachable).",
        COUNTER,
        |b| b.counters.no_backend_refused,
    ),
    (
        "reset_on_down_total",
        "Connections to a backend that failed its checks closed with a reset towards the client.",
        COUNTER,
        |b| b.counters.reset_on_down,
    ),
    ("flows_created_total", "Flows created.", COUNTER, |b| {
        b.flows.created
    }),
    ("flows_expired_total", "Flows expired.", COUNTER, |b| {
        b.flows.expired
    }),
    (
        "flows_evicted_total",
        "Live flows evicted to make room.",
        COUNTER,
        |b| b.flows.evicted,
    ),
    (
        "flows_reload_removed_total",
        "Live flows a reload removed (backend gone).",
        COUNTER,
        |b| b.flows.reload_removed,
    ),
    ("flows", "Live flows in the worker's table.", GAUGE, |b| {
        b.flows.live
    }),
    (
        "flow_table_capacity",
        "Flows the worker's table holds at most.",
        GAUGE,
        |b| b.capacity,
    ),
];

const COUNTER: MetricType = MetricType::COUNTER;
const GAUGE: MetricType = MetricType::GAUGE;

/// The Prometheus text of a status: every family `rialto_*`, per worker
/// labelled by `queue`.
pub fn metrics(status: &Status, services: &[ServiceStatus]) -> String {
    let mut families = Vec::new();
    for (name, help, kind, value) in WORKER_METRICS {
        let mut f = Family::new(name, help, kind);
        for w in &status.workers {
            f.add(&[("queue", &w.queue.to_string())], value(w));
        }
        families.push(f);
    }
    let mut drops = Family::counter("drops_total", "Frames dropped, by reason.");
    for w in &status.workers {
        let queue = w.queue.to_string();
        for (reason, n) in &w.stats.drops {
            drops.add(&[("queue", &queue), ("reason", reason)], *n);
        }
    }
    families.push(drops);

    for (name, help, kind, value) in BALANCE_METRICS {
        let mut f = Family::new(name, help, kind);
        for w in &status.workers {
            if let Some(b) = &w.stats.balance {
                f.add(&[("queue", &w.queue.to_string())], value(b));
            }
        }
        families.push(f);
    }

    let mut free = Family::gauge(
        "snat_ports_free",
        "Free SNAT ports of the worker's slice, per address and protocol.",
    );
    let mut slice = Family::gauge(
        "snat_ports",
        "SNAT ports in the worker's slice, per address and protocol.",
    );
    for w in &status.workers {
        let queue = w.queue.to_string();
        for s in &w.snat {
            let addr = s.addr.to_string();
            let labels = [
                ("queue", queue.as_str()),
                ("addr", &addr),
                ("proto", s.proto),
            ];
            free.add(&labels, s.free);
            slice.add(&labels, s.slice);
        }
    }
    families.push(free);
    families.push(slice);

    let mut umem = Family::gauge(
        "umem_frames",
        "The worker's UMEM frames, by where they are: free, kernel_rx (fill and RX rings), kernel_tx (TX and completion rings), lent (to another worker).",
    );
    for w in &status.workers {
        let queue = w.queue.to_string();
        if let Some(l) = &w.umem {
            for (state, n) in [
                ("free", l.free),
                ("kernel_rx", l.kernel_rx),
                ("kernel_tx", l.kernel_tx),
                ("lent", l.lent),
            ] {
                umem.add(&[("queue", &queue), ("where", state)], n as u64);
            }
        }
    }
    families.push(umem);

    let mut table = [
        Family::gauge(
            "flow_table_bytes",
            "Bytes of the worker's flow table, mapped, by part: its slots (in a file of the state directory) and its indexes (anonymous memory).",
        ),
        Family::gauge(
            "flow_table_resident_bytes",
            "Bytes of the worker's flow table in memory (pages touched so far).",
        ),
        Family::gauge(
            "flow_table_huge_page_bytes",
            "Bytes of the worker's flow table in 2 MB pages, by part: the slots get them on a tmpfs mounted with huge= (none on /dev/shm as it is), the indexes where transparent huge pages are on.",
        ),
    ];
    for w in &status.workers {
        let queue = w.queue.to_string();
        for (part, b) in &w.flow_table {
            for (family, value) in table.iter_mut().zip([b.bytes, b.resident, b.huge]) {
                family.add(&[("queue", &queue), ("part", part)], value);
            }
        }
    }
    families.extend(table);

    let mut xdp_packets = Family::counter(
        "xdp_packets_total",
        "Frames the XDP program steered or passed, by reason.",
    );
    let mut xdp_bytes = Family::counter(
        "xdp_bytes_total",
        "Bytes the XDP program steered or passed, by reason.",
    );
    for (reason, c) in &status.xdp {
        xdp_packets.add(&[("reason", reason)], c.packets);
        xdp_bytes.add(&[("reason", reason)], c.bytes);
    }
    families.push(xdp_packets);
    families.push(xdp_bytes);

    let mut generation = Family::gauge(
        "config_generation",
        "Generation of the published config tables (Maglev included): higher after each reload that published tables.",
    );
    generation.add(&[], status.generation);
    let mut reloads = Family::counter("reloads_total", "Config reloads, by result.");
    reloads.add(&[("result", "ok")], status.reloads.ok);
    reloads.add(&[("result", "rejected")], status.reloads.rejected);
    reloads.add(&[("result", "failed")], status.reloads.failed);
    reloads.add(&[("result", "rolled_back")], status.reloads.rolled_back);
    let mut last = Family::gauge(
        "last_reload_ok",
        "1 if the last reload was applied, 0 if it was rejected (absent before any).",
    );
    if let Some(l) = &status.reloads.last {
        last.add(&[], u64::from(l.ok));
    }
    families.extend([generation, reloads, last]);
    if let Some(r) = &status.resumed {
        let mut resumed = Family::gauge(
            "flows_resumed",
            "Flows a previous Rialto left, at start: recovered, or not and why.",
        );
        for (outcome, n) in [
            ("recovered", r.recovered),
            ("expired", r.expired),
            ("gone", r.gone),
            ("no_port", r.no_port),
            ("duplicate", r.duplicate),
            ("full", r.full),
            ("torn", r.torn),
            ("discarded", r.discarded),
        ] {
            resumed.add(&[("outcome", outcome)], n);
        }
        let mut millis = Family::gauge(
            "flows_resume_seconds",
            "How long reading and restoring them took.",
        );
        millis.add_f64(&[], r.millis as f64 / 1000.0);
        let mut take_over = Family::gauge(
            "take_over_seconds",
            "After a take-over: from asking the running Rialto to let go to serving (traffic went to the kernel meanwhile).",
        );
        if let Some(gap) = r.take_over_millis {
            take_over.add_f64(&[], gap as f64 / 1000.0);
        }
        families.extend([resumed, millis, take_over]);
    }

    families.extend(backend_families(services));
    let mut announced = Family::gauge(
        "announced",
        "1 if this node's VIPs are announced (exported over BGP, or so /api/v1/announce says), 0 if withdrawn; the reason as a label.",
    );
    announced.add(
        &[("why", status.announce.why)],
        u64::from(status.announce.announced),
    );
    let mut transitions = Family::counter(
        "announce_transitions_total",
        "Times this node was announced or withdrawn.",
    );
    transitions.add(&[], status.announce.transitions);
    let mut draining = Family::gauge("draining", "1 while this node drains.");
    draining.add(&[], u64::from(status.draining));
    families.extend([announced, transitions, draining]);
    if let Some(fleet) = &status.fleet {
        families.extend(fleet_families(fleet));
    }

    let families: Vec<MetricFamily> = families
        .into_iter()
        .map(|f| f.0)
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .expect("metric families encode")
}

/// The fleet's syncer: what went out, and per peer what came in.
fn fleet_families(fleet: &rialto::fleet::FleetStatus) -> Vec<Family> {
    let mut sent = Family::counter(
        "fleet_sent_total",
        "What this node sent its peers: datagrams, flows (changes), datagrams sent again.",
    );
    sent.add(&[("what", "datagrams")], fleet.datagrams_sent);
    sent.add(&[("what", "flows")], fleet.flows_sent);
    sent.add(&[("what", "resent")], fleet.resent);
    let mut dropped = Family::counter(
        "fleet_dropped_total",
        "Changes lost on the way: a worker's outbox full, a worker's inbox full, datagrams from no peer.",
    );
    dropped.add(&[("where", "outbox_full")], fleet.outbox_full);
    dropped.add(&[("where", "inbox_full")], fleet.inbox_full);
    dropped.add(&[("where", "not_peer")], fleet.not_peer);
    let mut received = Family::counter(
        "fleet_peer_received_total",
        "Per peer: datagrams and flows received, flows adopted into the workers' tables.",
    );
    let mut lost = Family::counter(
        "fleet_peer_sequences_total",
        "Per peer: sequence numbers found missing, and repaired.",
    );
    let mut rejected = Family::counter(
        "fleet_peer_rejected_total",
        "Per peer: datagrams or flows refused, by reason.",
    );
    let mut state = Family::gauge(
        "fleet_peer_state",
        "Per peer: 1 for its state (never heard, syncing, in_sync, lost).",
    );
    for p in &fleet.peers {
        let node = p.node.to_string();
        let peer = ("peer", node.as_str());
        received.add(&[peer, ("what", "datagrams")], p.datagrams_received);
        received.add(&[peer, ("what", "flows")], p.flows_received);
        received.add(&[peer, ("what", "adopted")], p.flows_adopted);
        lost.add(&[peer, ("what", "lost")], p.lost);
        lost.add(&[peer, ("what", "repaired")], p.repaired);
        for (reason, n) in &p.rejected {
            rejected.add(&[peer, ("reason", reason.as_str())], *n);
        }
        state.add(&[peer, ("state", p.state.as_str())], 1);
    }
    let delay = &fleet.replication_delay;
    let mut histogram = Histogram::default();
    histogram.set_sample_count(delay.flows);
    histogram.set_sample_sum(delay.sum_seconds);
    histogram.set_bucket(
        (delay.buckets.iter())
            .map(|&(le, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(le);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    let mut metric = Metric::default();
    metric.set_histogram(histogram);
    let mut replication = Family::new(
        "fleet_replication_delay_seconds",
        "From a peer's worker handing a new flow to its syncer to a worker here adopting it (wall clocks).",
        MetricType::HISTOGRAM,
    );
    replication.0.mut_metric().push(metric);
    vec![sent, dropped, received, lost, rejected, state, replication]
}
