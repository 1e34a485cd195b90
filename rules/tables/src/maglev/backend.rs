//! A backend as the CLI writes it: `ADDR:PORT/PROTO[@SCOPE][=WEIGHT]`.

use std::{fmt, str::FromStr};

use crate::{Endpoint, ParseEndpointError};

/// A backend and its weight: `198.19.0.5:8080/TCP=3`, `[fd00::5]:80/TCP`
/// (weight 1 when omitted; 0 drains it), `198.19.0.5:8080/TCP@100=3` (in
/// scope 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightedBackend {
    pub endpoint: Endpoint,
    pub weight: u32,
    /// Tells apart backends with the same endpoint: Rialto's config puts
    /// each backend in its cluster's VNI, as two clusters may use the same
    /// pod addresses. Part of the identity in Rialto mode; Cilium mode
    /// knows no scopes and refuses an endpoint listed in two.
    pub scope: Option<u32>,
}

impl WeightedBackend {
    /// What tells backends apart, in identity order.
    pub(super) fn key(&self) -> (Endpoint, Option<u32>) {
        (self.endpoint, self.scope)
    }
}

/// Why an `ADDR:PORT/PROTO[@SCOPE][=WEIGHT]` string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseBackendError {
    /// The part before `=` is not an endpoint.
    #[error(transparent)]
    Endpoint(#[from] ParseEndpointError),
    /// The part after `=` is not a `u32`.
    #[error("weight {weight:?} is not a whole number from 0 to {}", u32::MAX)]
    BadWeight { weight: String },
    /// The part after `@` is not a `u32`.
    #[error("scope {scope:?} is not a whole number from 0 to {}", u32::MAX)]
    BadScope { scope: String },
}

impl FromStr for WeightedBackend {
    type Err = ParseBackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (endpoint, weight) = match s.rsplit_once('=') {
            Some((endpoint, weight)) => {
                let weight = weight.parse().map_err(|_| ParseBackendError::BadWeight {
                    weight: weight.to_owned(),
                })?;
                (endpoint, weight)
            }
            None => (s, 1),
        };
        let (endpoint, scope) = match endpoint.rsplit_once('@') {
            Some((endpoint, scope)) => {
                let scope = scope.parse().map_err(|_| ParseBackendError::BadScope {
                    scope: scope.to_owned(),
                })?;
                (endpoint, Some(scope))
            }
            None => (endpoint, None),
        };
        Ok(Self {
            endpoint: endpoint.parse()?,
            weight,
            scope,
        })
    }
}

impl fmt::Display for WeightedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.endpoint)?;
        if let Some(scope) = self.scope {
            write!(f, "@{scope}")?;
        }
        write!(f, "={}", self.weight)
    }
}
