//! Which backends take new flows, as health checks find them: a service's
//! checks, its preferred clusters, and the choice of backends its Maglev
//! table spreads new flows over.
//!
//! The config says how to check (`Check`) and which clusters to prefer
//! (`Preference`); the health checker says which backends answer. From
//! both, [`select`] picks the backends new flows go to, and
//! [`Snapshot::with_health`] rebuilds the Maglev tables whose pick
//! changed, off the hot path, as a reload would (a backend that leaves the
//! pick keeps its live flows: the connection table holds them).

use std::sync::Arc;

use crate::{BackendState, Endpoint, MaglevError, MaglevHash, Snapshot, maglev};

/// How a service's backends are checked, through the tunnel, from one of
/// Rialto's SNAT addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub kind: CheckKind,
    /// The port checked; `None`: the backend's own.
    pub port: Option<u16>,
    /// Between two checks of a backend (each spread by up to a tenth either
    /// way, so checks do not go out together).
    pub interval_ms: u32,
    /// How long a check may take.
    pub timeout_ms: u32,
    /// Checks passed in a row that bring a backend back.
    pub rise: u8,
    /// Checks failed in a row that take a backend out.
    pub fall: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers with `status`.
    Http { path: String, status: u16 },
}

impl Check {
    /// GLB Director's: a check every 2 s, 1 s to answer, 3 in a row to
    /// change state.
    pub const DEFAULT_INTERVAL_MS: u32 = 2000;
    pub const DEFAULT_TIMEOUT_MS: u32 = 1000;
    pub const DEFAULT_RISE: u8 = 3;
    pub const DEFAULT_FALL: u8 = 3;
}

/// Clusters a service prefers: new flows go only to their backends while
/// at least `min_healthy` of those backends are healthy, and to every
/// cluster's (by weight) while fewer are.
#[derive(Clone, Debug, PartialEq)]
pub struct Preference {
    /// Cluster indices; empty: no preference.
    pub clusters: Vec<u16>,
    /// A fraction, 0 to 1, of the preferred clusters' active backends.
    pub min_healthy: f64,
}

/// The backends (by index) new flows may go to: the active ones that are
/// `healthy`, only those of the preferred clusters while enough of them
/// are healthy.
pub fn select(
    backends: &[crate::Backend],
    preference: &Preference,
    healthy: impl Fn(usize) -> bool,
) -> Vec<bool> {
    let usable: Vec<bool> = (backends.iter().enumerate())
        .map(|(i, b)| b.state == BackendState::Active && healthy(i))
        .collect();
    let preferred = |i: usize| preference.clusters.contains(&backends[i].cluster);
    let active_preferred = (0..backends.len())
        .filter(|&i| preferred(i) && backends[i].state == BackendState::Active)
        .count();
    let usable_preferred = (0..backends.len())
        .filter(|&i| preferred(i) && usable[i])
        .count();
    let enough = usable_preferred > 0
        && usable_preferred as f64 >= preference.min_healthy * active_preferred as f64;
    if preference.clusters.is_empty() || !enough {
        return usable;
    }
    (0..backends.len())
        .map(|i| usable[i] && preferred(i))
        .collect()
}

impl crate::Service {
    /// The Maglev table over the `selected` backends; `None` if none is
    /// selected or all those weigh nothing.
    pub fn build_table(
        &self,
        clusters: &[crate::Cluster],
        selected: &[bool],
    ) -> Result<Option<Arc<maglev::Table>>, MaglevError> {
        let weighted: Vec<_> = (self.backends.iter().zip(selected))
            .map(|(b, &on)| maglev::WeightedBackend {
                endpoint: Endpoint {
                    addr: b.addr.ip(),
                    port: b.addr.port(),
                    proto: self.vip.proto,
                },
                weight: if on { b.weight } else { 0 },
                // Two clusters may use the same pod address: each backend
                // is known by its cluster's VNI as well.
                scope: Some(clusters[usize::from(b.cluster)].vni),
            })
            .collect();
        if weighted.iter().all(|b| b.weight == 0) {
            return Ok(None);
        }
        maglev::Table::build(self.maglev.hash, self.maglev.size, &weighted)
            .map(|t| Some(Arc::new(t)))
    }
}

/// What a service's Maglev table is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevParams {
    pub hash: MaglevHash,
    pub size: u32,
}

impl Snapshot {
    /// These tables with each service's pick of backends made again for
    /// `healthy` (per service, per backend; a backend not in it counts as
    /// healthy), and its Maglev table rebuilt where the pick changed; the
    /// others are shared, not copied.
    pub fn with_health(&self, healthy: &[Vec<bool>]) -> Result<Snapshot, MaglevError> {
        let mut next = self.clone();
        for (s, service) in next.services.iter_mut().enumerate() {
            let health = healthy.get(s);
            let up = |b: usize| health.and_then(|h| h.get(b)).copied().unwrap_or(true);
            service.failed = (0..service.backends.len()).map(|b| !up(b)).collect();
            let selected = select(&service.backends, &service.preference, up);
            if selected != service.selected {
                service.table = service.build_table(&self.clusters, &selected)?;
                service.selected = selected;
            }
        }
        next.resetting =
            (next.services.iter()).any(|s| s.reset_on_down && s.failed.iter().any(|&f| f));
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backend;

    fn backend(cluster: u16, state: BackendState) -> Backend {
        Backend {
            cluster,
            addr: "198.19.0.10:80".parse().unwrap(),
            weight: 1,
            state,
        }
    }

    /// Two backends in cluster 0 (preferred), two in cluster 1.
    fn four() -> Vec<Backend> {
        vec![
            backend(0, BackendState::Active),
            backend(0, BackendState::Active),
            backend(1, BackendState::Active),
            backend(1, BackendState::Active),
        ]
    }

    fn prefer_zero(min_healthy: f64) -> Preference {
        Preference {
            clusters: vec![0],
            min_healthy,
        }
    }

    #[test]
    fn without_a_preference_every_healthy_active_backend_is_picked() {
        let mut backends = four();
        backends[3].state = BackendState::Draining;
        let none = Preference {
            clusters: Vec::new(),
            min_healthy: 0.0,
        };
        assert_eq!(
            select(&backends, &none, |i| i != 1),
            [true, false, true, false]
        );
    }

    #[test]
    fn the_preferred_clusters_while_enough_of_them_are_healthy() {
        let backends = four();
        let half = prefer_zero(0.5);
        assert_eq!(
            select(&backends, &half, |_| true),
            [true, true, false, false]
        );
        // One of two healthy: half, enough.
        assert_eq!(
            select(&backends, &half, |i| i != 0),
            [false, true, false, false]
        );
        // None: every cluster's healthy backends.
        assert_eq!(
            select(&backends, &half, |i| i > 1),
            [false, false, true, true]
        );
        // All of them must be healthy: one down is too few.
        let all = prefer_zero(1.0);
        assert_eq!(
            select(&backends, &all, |i| i != 0),
            [false, true, true, true]
        );
        // Even with a fraction of 0, a preferred cluster with no healthy
        // backend takes no flow.
        let any = prefer_zero(0.0);
        assert_eq!(
            select(&backends, &any, |i| i > 1),
            [false, false, true, true]
        );
    }
}
