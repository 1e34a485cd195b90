//! The operator API: an HTTP endpoint (loopback by default) serving
//! Prometheus metrics and a small JSON API.
//!
//! - `GET /metrics`: Prometheus text format (see [`metrics`]);
//! - `GET /api/v1/status`: the config generation, reloads, the XDP program's
//!   counters and every worker's counters, as JSON (what `rialto stats` reads);
//! - `GET /api/v1/services`: the running config's services and backends;
//! - `POST /api/v1/reload`: reload the config file, as SIGHUP does.
//!
//! Requests are served one at a time on a thread of their own; the control
//! plane's lock is never taken by a worker.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use prometheus::proto::{
    Counter as PromCounter, Gauge, LabelPair, Metric, MetricFamily, MetricType,
};
use serde::Serialize;
use tiny_http::{Header, Method, Response, Server};
use tracing::{error, info};

use crate::control::{Control, Status};

/// A running API server; stopped on drop.
pub struct Api {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
}

impl Api {
    pub fn start(addr: SocketAddr, control: Arc<Mutex<Control>>) -> Result<Self> {
        let server = Server::http(addr)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot serve the API on {addr}"))?;
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("rialto-api".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    let (status, body, kind) = handle(request.method(), request.url(), &control);
                    let header = Header::from_bytes("Content-Type", kind).expect("a valid header");
                    let response = Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header);
                    if let Err(e) = request.respond(response) {
                        error!("API response failed: {e}");
                    }
                }
            })
            .context("cannot start the API thread")?;
        info!(%addr, "API listening");
        Ok(Self {
            server,
            thread: Some(thread),
        })
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("addr", &self.server.server_addr().to_ip())
            .finish()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn handle(method: &Method, url: &str, control: &Mutex<Control>) -> (u16, String, &'static str) {
    let path = url.split('?').next().unwrap_or(url);
    let mut control = match control.lock() {
        Ok(control) => control,
        Err(poisoned) => poisoned.into_inner(),
    };
    match (method, path) {
        (Method::Get, "/metrics") => (200, metrics(&control.status()), TEXT),
        (Method::Get, "/api/v1/status") => (200, json(&control.status()), JSON),
        (Method::Get, "/api/v1/services") => (200, json(&control.services()), JSON),
        (Method::Post, "/api/v1/reload") => match control.reload() {
            Ok(generation) => {
                info!(generation, "config reloaded through the API");
                (
                    200,
                    json(&serde_json::json!({ "generation": generation })),
                    JSON,
                )
            }
            Err(e) => {
                error!("reload rejected, the running config stays: {e:#}");
                (
                    422,
                    json(&serde_json::json!({ "error": format!("{e:#}") })),
                    JSON,
                )
            }
        },
        (_, "/metrics" | "/api/v1/status" | "/api/v1/services" | "/api/v1/reload") => (
            405,
            json(&serde_json::json!({ "error": "method not allowed" })),
            JSON,
        ),
        _ => (
            404,
            json(&serde_json::json!({ "error": "no such endpoint" })),
            JSON,
        ),
    }
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("API values serialize")
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
            c.set_value(value as f64);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value as f64);
            m.set_gauge(g);
        }
        self.0.mut_metric().push(m);
        self
    }
}

/// The Prometheus text of a status: every family `rialto_*`, per worker
/// labelled by `queue`.
pub fn metrics(status: &Status) -> String {
    let mut families = Vec::new();
    let mut per_worker = |f: Family, value: &dyn Fn(&crate::control::WorkerStatus) -> u64| {
        let mut f = f;
        for w in &status.workers {
            f.add(&[("queue", &w.queue.to_string())], value(w));
        }
        families.push(f);
    };
    per_worker(
        Family::counter("rx_packets_total", "Frames received by the worker."),
        &|w| w.stats.rx_packets,
    );
    per_worker(
        Family::counter("rx_bytes_total", "Bytes received by the worker."),
        &|w| w.stats.rx_bytes,
    );
    per_worker(
        Family::counter("tx_packets_total", "Frames transmitted by the worker."),
        &|w| w.stats.tx_packets,
    );
    per_worker(
        Family::counter("tx_bytes_total", "Bytes transmitted by the worker."),
        &|w| w.stats.tx_bytes,
    );
    per_worker(
        Family::counter(
            "handoff_out_total",
            "Frames handed to the worker owning their flow.",
        ),
        &|w| w.stats.handoff_out,
    );
    per_worker(
        Family::counter("handoff_in_total", "Frames taken from other workers."),
        &|w| w.stats.handoff_in,
    );
    per_worker(
        Family::gauge(
            "tables_generation",
            "Generation of the config tables the worker runs on.",
        ),
        &|w| w.generation,
    );

    let mut drops = Family::counter("drops_total", "Frames dropped, by reason.");
    for w in &status.workers {
        let queue = w.queue.to_string();
        for (reason, n) in &w.stats.drops {
            drops.add(&[("queue", &queue), ("reason", reason)], *n);
        }
    }
    families.push(drops);

    let balancing: Vec<_> = status
        .workers
        .iter()
        .filter_map(|w| Some((w.queue.to_string(), w.stats.balance?)))
        .collect();
    let mut balance = |f: Family, value: &dyn Fn(&rialto::stats::BalanceStats) -> u64| {
        let mut f = f;
        for (queue, b) in &balancing {
            f.add(&[("queue", queue)], value(b));
        }
        families.push(f);
    };
    balance(
        Family::counter("forward_packets_total", "Packets sent toward a backend."),
        &|b| b.counters.forward,
    );
    balance(
        Family::counter("reply_packets_total", "Packets sent back toward a client."),
        &|b| b.counters.reply,
    );
    balance(
        Family::counter(
            "icmp_time_exceeded_total",
            "ICMP time exceeded made by Rialto.",
        ),
        &|b| b.counters.icmp_time_exceeded,
    );
    balance(
        Family::counter(
            "icmp_too_big_total",
            "ICMP fragmentation needed / packet too big made by Rialto.",
        ),
        &|b| b.counters.icmp_too_big,
    );
    balance(
        Family::counter(
            "icmp_translated_total",
            "ICMP errors about a flow, translated and passed on.",
        ),
        &|b| b.counters.icmp_translated,
    );
    balance(
        Family::counter("flows_created_total", "Flows created."),
        &|b| b.flows.created,
    );
    balance(
        Family::counter("flows_expired_total", "Flows expired."),
        &|b| b.flows.expired,
    );
    balance(
        Family::counter("flows_evicted_total", "Live flows evicted to make room."),
        &|b| b.flows.evicted,
    );
    balance(
        Family::counter(
            "flows_reload_removed_total",
            "Live flows a reload removed (backend gone).",
        ),
        &|b| b.flows.reload_removed,
    );
    balance(
        Family::gauge("flows", "Live flows in the worker's table."),
        &|b| b.flows.live,
    );
    balance(
        Family::gauge(
            "flow_table_capacity",
            "Flows the worker's table holds at most.",
        ),
        &|b| b.capacity,
    );

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
        "Generation of the published config tables (Maglev included): one more per reload.",
    );
    generation.add(&[], status.generation);
    let mut reloads = Family::counter("reloads_total", "Config reloads, by result.");
    reloads.add(&[("result", "ok")], status.reloads.ok);
    reloads.add(&[("result", "rejected")], status.reloads.rejected);
    let mut last = Family::gauge(
        "last_reload_ok",
        "1 if the last reload was applied, 0 if it was rejected (absent before any).",
    );
    if let Some(l) = &status.reloads.last {
        last.add(&[], u64::from(l.ok));
    }
    families.extend([generation, reloads, last]);

    let families: Vec<MetricFamily> = families
        .into_iter()
        .map(|f| f.0)
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .expect("metric families encode")
}
