//! What the appliance reads off the host: the config file, the uplink's MAC
//! and receive queues; and how the XDP program is attached to it.

use std::{net::IpAddr, path::Path};

use anyhow::{Context, Result};
use rialto_rules::Budget;
use rialto_tables::{Snapshot, Steering as SteeringRules};
use xdp_redirect::AttachMode;

/// Reads and compiles the config file, for `budget`.
pub fn load_config(path: &Path, budget: &Budget) -> Result<Snapshot> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
    Ok(rialto_rules::load_for(&name, &text, budget)?)
}

/// What `workers` workers on this machine may take: `MemAvailable` from
/// /proc/meminfo (unknown: no machine limit, only the config's own).
pub fn budget(workers: u32) -> Budget {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    Budget { workers, available }
}

/// The interface's MAC address, from sysfs.
pub fn iface_mac(iface: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{iface}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let mac: rialto_rules::config::Mac = text
        .trim()
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{path}: {e}"))?;
    Ok(mac.0)
}

/// The receive queues of `iface`, from sysfs (`ip netns exec` mounts the
/// namespace's own).
pub fn rx_queue_count(iface: &str) -> Result<u32> {
    let dir = format!("/sys/class/net/{iface}/queues");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))?;
    let mut count = 0;
    for entry in entries {
        if entry?.file_name().to_string_lossy().starts_with("rx-") {
            count += 1;
        }
    }
    Ok(count)
}

/// How the XDP program is attached, as the command line says it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum XdpMode {
    /// Native XDP in the driver (needed for zero-copy).
    Driver,
    /// Generic XDP: any device, slower.
    Skb,
}

impl From<XdpMode> for AttachMode {
    fn from(mode: XdpMode) -> Self {
        match mode {
            XdpMode::Driver => Self::Driver,
            XdpMode::Skb => Self::Skb,
        }
    }
}

/// Refuses steering that would take this host's own traffic: a SNAT
/// address or a VIP's address (from the config, or from `--snat-addr` and
/// `--vip`) that is an address of one of its interfaces (the XDP program
/// would steer everything to it, or that port of it, into Rialto: the node
/// would drop off its own network). `tables` names the service of a VIP.
pub fn check_own_addresses(rules: &SteeringRules, tables: Option<&Snapshot>) -> Result<()> {
    let addrs = nix::ifaddrs::getifaddrs().context("cannot list this host's addresses")?;
    for ifaddr in addrs {
        let Some(addr) = ifaddr.address.as_ref().and_then(ip_of) else {
            continue;
        };
        let iface = &ifaddr.interface_name;
        if rules.snat_addrs.contains(&addr) {
            anyhow::bail!(
                "SNAT address {addr} is an address of this host ({iface}): Rialto would take \
                 all of the node's own traffic to it"
            );
        }
        if let Some(vip) = rules.vips.iter().find(|v| v.addr == addr) {
            let service = tables
                .and_then(|t| t.services.iter().find(|s| s.vip == *vip))
                .map_or_else(|| "--vip".to_owned(), |s| format!("service {:?}", s.name));
            anyhow::bail!(
                "{service}: VIP {vip} is on an address of this host ({iface}): Rialto would \
                 take the node's own traffic to {vip}"
            );
        }
    }
    Ok(())
}

fn ip_of(addr: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}
