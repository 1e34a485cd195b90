//! Kubernetes multi-cluster services as Rialto services: a `ServiceImport`
//! (`multicluster.x-k8s.io`, KEP-1645) and its `EndpointSlice`s, as
//! `kubectl get -o yaml` prints them (a `List`, or several documents).
//!
//! - Each port of the ServiceImport, on each of its `spec.ips`, becomes a
//!   service named `NAMESPACE/NAME:PORT` with that VIP.
//! - Each EndpointSlice labelled `multicluster.kubernetes.io/service-name:
//!   NAME` (same namespace) gives backends in the cluster its
//!   `multicluster.kubernetes.io/source-cluster` label names: each address
//!   of each endpoint, on the slice's port of the same name. A ready
//!   endpoint is active; one still serving but terminating (or not ready)
//!   is draining; one not serving is left out.
//!
//! The clusters themselves (VNI, gateways) come from the TOML config.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::{
    Endpoint, Proto,
    config::{Backend, BackendState, Service, Spanned},
};

const SERVICE_NAME: &str = "multicluster.kubernetes.io/service-name";
const SOURCE_CLUSTER: &str = "multicluster.kubernetes.io/source-cluster";

/// Why a file could not be imported: a message, with the YAML position
/// when the YAML parser gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ImportError {
    /// An error about the file as a whole, with no position in it.
    pub(crate) fn at(message: String) -> Self {
        Self {
            line: 0,
            column: 0,
            message,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Option<ImportSpec>,
    #[serde(default)]
    items: Vec<Object>,
    #[serde(default)]
    endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    ports: Vec<SlicePort>,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct ImportSpec {
    #[serde(default)]
    ips: Vec<IpAddr>,
    #[serde(default)]
    ports: Vec<ImportPort>,
}

#[derive(Debug, Deserialize)]
struct ImportPort {
    #[serde(default)]
    name: String,
    port: u16,
    #[serde(default = "tcp")]
    protocol: String,
}

fn tcp() -> String {
    "TCP".to_owned()
}

#[derive(Debug, Deserialize)]
struct SliceEndpoint {
    addresses: Vec<IpAddr>,
    #[serde(default)]
    conditions: Conditions,
}

#[derive(Debug, Default, Deserialize)]
struct Conditions {
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct SlicePort {
    #[serde(default)]
    name: String,
    port: u16,
}

/// The services a ServiceImport file describes. `span` is where the file
/// is named in the TOML config: problems the config check finds with
/// these services point there.
pub fn import(text: &str, span: std::ops::Range<usize>) -> Result<Vec<Service>, ImportError> {
    let mut objects = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let object = Object::deserialize(document).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ImportError {
                line,
                column,
                message: e.to_string(),
            }
        })?;
        if object.kind == "List" {
            objects.extend(object.items);
        } else {
            objects.push(object);
        }
    }
    let mut imports = objects.iter().filter(|o| o.kind == "ServiceImport");
    let (Some(import), None) = (imports.next(), imports.next()) else {
        return Err(ImportError::at(
            "expected exactly one ServiceImport (and its EndpointSlices)".to_owned(),
        ));
    };
    let spec = import
        .spec
        .as_ref()
        .ok_or_else(|| ImportError::at("the ServiceImport has no spec".to_owned()))?;
    if spec.ips.is_empty() {
        return Err(ImportError::at(format!(
            "ServiceImport {}/{} has no spec.ips: no VIP to serve it on",
            import.metadata.namespace, import.metadata.name
        )));
    }
    let slices: Vec<&Object> = objects
        .iter()
        .filter(|o| {
            o.kind == "EndpointSlice"
                && o.metadata.namespace == import.metadata.namespace
                && o.metadata.labels.get(SERVICE_NAME) == Some(&import.metadata.name)
        })
        .collect();
    let mut services = Vec::new();
    for port in &spec.ports {
        let proto = match port.protocol.as_str() {
            "TCP" => Proto::Tcp,
            "UDP" => Proto::Udp,
            other => {
                return Err(ImportError::at(format!(
                    "port {}: protocol {other} is not served (TCP or UDP)",
                    port.port
                )));
            }
        };
        let mut backends = Vec::new();
        for slice in &slices {
            let cluster = slice.metadata.labels.get(SOURCE_CLUSTER).ok_or_else(|| {
                ImportError::at(format!(
                    "EndpointSlice {} has no {SOURCE_CLUSTER} label",
                    slice.metadata.name
                ))
            })?;
            let Some(target) = slice.ports.iter().find(|p| p.name == port.name) else {
                continue;
            };
            for endpoint in &slice.endpoints {
                let c = &endpoint.conditions;
                let serving = c.serving.or(c.ready).unwrap_or(true);
                if !serving {
                    continue;
                }
                let active = c.ready.unwrap_or(true) && !c.terminating.unwrap_or(false);
                for &addr in &endpoint.addresses {
                    backends.push(Backend {
                        cluster: at(&span, cluster.clone()),
                        addr: at(&span, SocketAddr::new(addr, target.port)),
                        weight: 1,
                        state: if active {
                            BackendState::Active
                        } else {
                            BackendState::Draining
                        },
                    });
                }
            }
        }
        for &ip in &spec.ips {
            let family = backends
                .iter()
                .filter(|b| b.addr.get_ref().is_ipv6() == ip.is_ipv6())
                .cloned()
                .collect();
            services.push(Service {
                name: at(
                    &span,
                    format!(
                        "{}/{}:{}",
                        import.metadata.namespace, import.metadata.name, port.port
                    ),
                ),
                vip: at(
                    &span,
                    Endpoint {
                        addr: ip,
                        port: port.port,
                        proto,
                    },
                ),
                table_size: None,
                hash: Default::default(),
                backends: at(&span, family),
                check: None,
                prefer: None,
                min_healthy: None,
                reset_on_down: false,
            });
        }
    }
    Ok(services)
}

/// `value`, placed where the import is named in the config.
fn at<T>(span: &std::ops::Range<usize>, value: T) -> Spanned<T> {
    Spanned::new(span.clone(), value)
}
