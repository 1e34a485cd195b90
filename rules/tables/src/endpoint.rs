//! `ADDR:PORT/PROTO`, the way operators write a service or backend endpoint.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

/// A transport protocol Rialto balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number (IANA).
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// An address, a port and a protocol: `198.18.100.1:80/TCP`, `[fd00:100::1]:53/udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

/// Why an `ADDR:PORT/PROTO` string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseEndpointError {
    /// No `/PROTO` suffix.
    #[error("{0:?} has no /PROTO suffix; write it as ADDR:PORT/TCP or ADDR:PORT/UDP")]
    MissingProto(String),
    /// The protocol is neither TCP nor UDP.
    #[error("unknown protocol {0:?}: expected TCP or UDP")]
    UnknownProto(String),
    /// The part before `/` is not `ADDR:PORT` (IPv6 as `[ADDR]:PORT`).
    #[error("{0:?} is not ADDR:PORT (IPv6 as [ADDR]:PORT)")]
    BadAddress(String),
}

impl FromStr for Endpoint {
    type Err = ParseEndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, proto) = s
            .rsplit_once('/')
            .ok_or_else(|| ParseEndpointError::MissingProto(s.to_owned()))?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(ParseEndpointError::UnknownProto(proto.to_owned())),
        };
        let sa: SocketAddr = addr
            .parse()
            .map_err(|_| ParseEndpointError::BadAddress(addr.to_owned()))?;
        Ok(Self {
            addr: sa.ip(),
            port: sa.port(),
            proto,
        })
    }
}

/// Read from a string as [`FromStr`] reads it, as the config writes it.
impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Written as [`fmt::Display`] writes it, which [`FromStr`] reads.
impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.addr, self.port),
            self.proto
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_families() {
        let v4: Endpoint = "198.19.0.5:8080/tcp".parse().unwrap();
        assert_eq!(v4.addr, "198.19.0.5".parse::<IpAddr>().unwrap());
        assert_eq!((v4.port, v4.proto), (8080, Proto::Tcp));
        assert_eq!(v4.to_string(), "198.19.0.5:8080/TCP");

        let v6: Endpoint = "[fd00:100::1]:53/UDP".parse().unwrap();
        assert_eq!(v6.to_string(), "[fd00:100::1]:53/UDP");
    }

    #[test]
    fn rejects_with_a_reason() {
        assert_eq!(
            "198.19.0.5:80".parse::<Endpoint>(),
            Err(ParseEndpointError::MissingProto("198.19.0.5:80".into()))
        );
        assert_eq!(
            "198.19.0.5:80/sctp".parse::<Endpoint>(),
            Err(ParseEndpointError::UnknownProto("sctp".into()))
        );
        assert_eq!(
            "fd00::1:80/udp".parse::<Endpoint>(),
            Err(ParseEndpointError::BadAddress("fd00::1:80".into()))
        );
    }
}
