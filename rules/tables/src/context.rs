//! What a flow's table indices mean: enough of a config's tables to carry
//! its flows over to another config's, across a reload or a restart.
//!
//! A flow remembers its service, backend, clusters and gateways by their
//! index in the tables it was made with. A reload carries it to the new
//! tables from the running ones; a restart, from the context the previous
//! process saved beside its flows. Both go through the same function (the
//! dataplane's `balance::carry`), so a flow keeps its backend across a
//! restart exactly as it does across a reload.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{Endpoint, Snapshot};

/// The names behind a snapshot's indices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowContext {
    /// Indexed like the snapshot's clusters.
    pub clusters: Vec<ContextCluster>,
    /// Indexed like the snapshot's services.
    pub services: Vec<ContextService>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextCluster {
    pub name: String,
    pub vni: u32,
    /// Indexed like the cluster's gateways.
    pub gateways: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextService {
    pub vip: Endpoint,
    /// Indexed like the service's backends: the backend's address and its
    /// cluster's index.
    pub backends: Vec<(SocketAddr, u16)>,
}

impl FlowContext {
    pub fn of(tables: &Snapshot) -> Self {
        Self {
            clusters: (tables.clusters.iter())
                .map(|c| ContextCluster {
                    name: c.name.clone(),
                    vni: c.vni,
                    gateways: c.gateways.clone(),
                })
                .collect(),
            services: (tables.services.iter())
                .map(|s| ContextService {
                    vip: s.vip,
                    backends: s.backends.iter().map(|b| (b.addr, b.cluster)).collect(),
                })
                .collect(),
        }
    }
}
