//! The operator API: an HTTP endpoint (loopback by default) serving
//! Prometheus metrics and a small JSON API.
//!
//! - `GET /metrics`: Prometheus text format ([`metrics`]);
//! - `GET /api/v1/status`: the config generation, reloads, the XDP program's
//!   counters and every worker's counters, as JSON (what `rialto stats` reads);
//! - `GET /api/v1/services`: the running config's services and backends;
//! - `POST /api/v1/reload`: with no body, reload the config file, as SIGHUP
//!   does; with a TOML body (`Content-Type: application/toml`), check it,
//!   put it in force, and make it the config file. `422` with the located
//!   problems if it is invalid (nothing changes), `503` if it was valid but
//!   rolled back, `409` while another reload runs (or with no config file),
//!   `500` if the file cannot be read or written, `415` for a body of
//!   another type.
//!
//! Reading never waits for a reload: the reads go to a [`View`] of
//! atomics and shared tables, and only a reload takes the control plane's
//! lock; a second reload is refused rather than queued, so reloads hold one
//! connection at most. The server ([`http`]) bounds what a client can make
//! it hold.

mod http;
mod metrics;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use serde::Serialize;
use tracing::{error, info};

use crate::control::{Control, ReloadError, Source, View};

/// The operator API's default address: loopback only.
pub const DEFAULT_API: &str = "127.0.0.1:9600";

/// Content types of a config in a reload's body.
const TOML: [&str; 3] = ["application/toml", "text/toml", "text/x-toml"];

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running API server; stopped on drop.
#[derive(Debug)]
pub struct Api {
    _server: http::Server,
}

impl Api {
    pub fn start(addr: SocketAddr, view: View, control: Arc<Mutex<Control>>) -> Result<Self> {
        let api = Handler {
            view,
            control,
            reloading: Mutex::new(()),
        };
        let server = http::Server::start(addr, move |request| api.handle(request))
            .with_context(|| format!("cannot serve the API on {addr}"))?;
        info!(addr = %server.addr(), "API listening");
        Ok(Self { _server: server })
    }
}

struct Handler {
    view: View,
    control: Arc<Mutex<Control>>,
    /// Held by the API's reload in progress.
    reloading: Mutex<()>,
}

impl Handler {
    fn handle(&self, request: &http::Request) -> http::Response {
        let ok = |kind, body| http::Response::new(200, kind, body);
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/metrics") => ok(
                TEXT,
                metrics::metrics(&self.view.status(), &self.view.services()),
            ),
            ("GET", "/api/v1/status") => ok(JSON, json(&self.view.status())),
            ("GET", "/api/v1/services") => ok(JSON, json(&self.view.services())),
            ("POST", "/api/v1/reload") => self.reload(request),
            ("GET", "/api/v1/announce") => {
                let announcement = self.view.announcement();
                let code = if announcement.announced { 200 } else { 503 };
                http::Response::new(code, JSON, json(&announcement))
            }
            ("POST", "/api/v1/drain") => {
                let already = (self.view.draining).swap(true, std::sync::atomic::Ordering::Relaxed);
                if !already {
                    info!("draining, as asked through the API");
                }
                http::Response::new(202, JSON, json(&serde_json::json!({ "draining": true })))
            }
            (
                _,
                "/metrics" | "/api/v1/status" | "/api/v1/services" | "/api/v1/reload"
                | "/api/v1/announce" | "/api/v1/drain",
            ) => http::Response::error(405, "method not allowed"),
            _ => http::Response::error(404, "no such endpoint"),
        }
    }

    /// `POST /api/v1/reload`: the file again, or the config in the body.
    fn reload(&self, request: &http::Request) -> http::Response {
        let text;
        let source = if request.body.is_empty() {
            Source::File
        } else {
            let kind = request.content_type.as_deref().unwrap_or("");
            let kind = kind.split(';').next().unwrap_or("").trim();
            if !TOML.iter().any(|t| kind.eq_ignore_ascii_case(t)) {
                return http::Response::error(
                    415,
                    "a reload's body is a config: send it as application/toml, or send no body to reload the file",
                );
            }
            let Ok(body) = std::str::from_utf8(&request.body) else {
                return http::Response::error(422, "the config is not UTF-8");
            };
            text = body;
            Source::Text(text)
        };
        let Ok(_reloading) = self.reloading.try_lock() else {
            return http::Response::error(409, "another reload is in progress; try again");
        };
        let outcome = self
            .control
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reload(source);
        match outcome {
            Ok(generation) => {
                info!(generation, "config reloaded through the API");
                http::Response::new(
                    200,
                    JSON,
                    json(&serde_json::json!({ "generation": generation })),
                )
            }
            Err(e) => {
                error!("reload rejected, the running config stays: {e}");
                let problems: Vec<String> = match &e {
                    ReloadError::Invalid(e) => match e.downcast_ref::<rialto_rules::Rejected>() {
                        Some(rejected) => rejected.to_string().lines().map(str::to_owned).collect(),
                        None => vec![format!("{e:#}")],
                    },
                    _ => vec![e.to_string()],
                };
                let body = serde_json::json!({ "error": e.to_string(), "problems": problems });
                http::Response::new(e.status(), JSON, json(&body))
            }
        }
    }
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("API values serialize")
}
