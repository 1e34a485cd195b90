//! Rialto's rules: what the border node owns and where it sends it.
//!
//! The control plane parses and validates here; the dataplane only indexes
//! what this crate produced.

pub mod config;
mod endpoint;
pub mod k8s;
pub mod maglev;
mod snapshot;

pub use endpoint::{Endpoint, ParseEndpointError, Proto};
pub use maglev::{MaglevError, MaglevHash, WeightedBackend};
pub use snapshot::{Backend, Cluster, CompileError, Node, Problem, Service, Snapshot, SnatPool};

use std::{fmt, net::IpAddr};

/// Parses and compiles the config `text`, read from `file`, with the
/// Kubernetes files it imports (paths relative to `file`'s directory): the
/// snapshot, or every problem found, each with its place.
pub fn load(file: &str, text: &str) -> Result<Snapshot, Rejected> {
    let located = |span: Option<std::ops::Range<usize>>, message: String| {
        let (line, column) = span.map_or((0, 0), |s| line_column(text, s.start));
        Located {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    };
    let mut config = match config::Config::parse(text) {
        Ok(config) => config,
        Err(e) => {
            let field = e.span.as_ref().and_then(|s| field_before(text, s.start));
            let message = match field {
                Some(field) => format!("{field}: {}", e.message),
                None => e.message,
            };
            return Err(Rejected {
                problems: vec![located(e.span, message)],
            });
        }
    };
    let dir = std::path::Path::new(file)
        .parent()
        .unwrap_or(std::path::Path::new(""));
    let mut problems = Vec::new();
    for import in &config.imports {
        let path = dir.join(import.file.get_ref());
        let imported = std::fs::read_to_string(&path)
            .map_err(|e| k8s::ImportError::at(format!("cannot read it: {e}")))
            .and_then(|yaml| k8s::import(&yaml, import.file.span()));
        match imported {
            Ok(services) => config.services.extend(services),
            Err(e) => problems.push(Located {
                file: path.display().to_string(),
                line: e.line,
                column: e.column,
                message: e.message,
            }),
        }
    }
    if problems.is_empty() {
        match Snapshot::compile(&config) {
            Ok(snapshot) => return Ok(snapshot),
            Err(compiled) => problems.extend(
                compiled
                    .into_iter()
                    .map(|p| located(Some(p.span), p.error.to_string())),
            ),
        }
    }
    Err(Rejected { problems })
}

/// The key whose value starts at byte `offset` (`key = value` on one line,
/// also inside an inline table), if the text there is one.
fn field_before(text: &str, offset: usize) -> Option<&str> {
    let before = text[..offset.min(text.len())].trim_end();
    let key = before.strip_suffix('=')?.trim_end();
    let start = key
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .map_or(0, |i| i + 1);
    Some(&key[start..]).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_diff_names_only_what_changed() {
        let old = Steering {
            vips: vec![
                "198.18.100.1:80/TCP".parse().unwrap(),
                "198.18.100.2:53/UDP".parse().unwrap(),
            ],
            tunnel_peers: vec!["198.18.2.1".parse().unwrap()],
            snat_addrs: vec!["198.18.200.1".parse().unwrap()],
            vxlan_port: VXLAN_PORT,
        };
        let new = Steering {
            vips: vec![
                "198.18.100.2:53/UDP".parse().unwrap(),
                "198.18.100.3:80/TCP".parse().unwrap(),
            ],
            tunnel_peers: vec!["198.18.2.1".parse().unwrap()],
            snat_addrs: vec!["198.18.200.2".parse().unwrap()],
            vxlan_port: 8472,
        };
        let (added, removed) = old.diff(&new);
        assert_eq!(added.vips, vec!["198.18.100.3:80/TCP".parse().unwrap()]);
        assert_eq!(removed.vips, vec!["198.18.100.1:80/TCP".parse().unwrap()]);
        assert!(added.tunnel_peers.is_empty() && removed.tunnel_peers.is_empty());
        assert_eq!(added.snat_addrs, new.snat_addrs);
        assert_eq!(removed.snat_addrs, old.snat_addrs);
        assert_eq!(added.vxlan_port, 8472);
        assert_eq!(old.diff(&old).0.vips.len() + old.diff(&old).1.vips.len(), 0);
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// A config that was not accepted, and why.
#[derive(Debug, thiserror::Error)]
pub struct Rejected {
    pub problems: Vec<Located>,
}

/// One problem of a rejected config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The config file, or a file it imports.
    pub file: String,
    /// 1-based; 0 when the parser could not tell where.
    pub line: usize,
    pub column: usize,
    /// The field, then the reason.
    pub message: String,
}

impl fmt::Display for Rejected {
    /// One line per problem: `FILE:LINE:COLUMN: field: reason`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", p.file, p.line, p.column, p.message)?;
        }
        Ok(())
    }
}

/// The IANA-assigned VXLAN port (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;

/// The largest VXLAN network identifier (24 bits, RFC 7348 §5).
pub const MAX_VNI: u32 = 0xff_ffff;

/// The traffic the XDP program steers into Rialto's AF_XDP sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steering {
    /// Service VIPs: destination address, port and protocol.
    pub vips: Vec<Endpoint>,
    /// Tunnel peers (remote gateways' VTEPs): VXLAN from these is Rialto's.
    pub tunnel_peers: Vec<IpAddr>,
    /// Rialto's SNAT addresses: replies to them are Rialto's.
    pub snat_addrs: Vec<IpAddr>,
    /// UDP destination port of VXLAN.
    pub vxlan_port: u16,
}

impl Steering {
    /// What goes from `self` to `new`: the entries to add (with `new`'s
    /// VXLAN port) and the entries to remove, so a reload writes only what
    /// changed into the XDP program's maps.
    pub fn diff(&self, new: &Self) -> (Self, Self) {
        fn minus<T: PartialEq + Copy>(a: &[T], b: &[T]) -> Vec<T> {
            a.iter().filter(|x| !b.contains(x)).copied().collect()
        }
        let added = Self {
            vips: minus(&new.vips, &self.vips),
            tunnel_peers: minus(&new.tunnel_peers, &self.tunnel_peers),
            snat_addrs: minus(&new.snat_addrs, &self.snat_addrs),
            vxlan_port: new.vxlan_port,
        };
        let removed = Self {
            vips: minus(&self.vips, &new.vips),
            tunnel_peers: minus(&self.tunnel_peers, &new.tunnel_peers),
            snat_addrs: minus(&self.snat_addrs, &new.snat_addrs),
            vxlan_port: self.vxlan_port,
        };
        (added, removed)
    }
}

impl Default for Steering {
    fn default() -> Self {
        Self {
            vips: Vec::new(),
            tunnel_peers: Vec::new(),
            snat_addrs: Vec::new(),
            vxlan_port: VXLAN_PORT,
        }
    }
}
