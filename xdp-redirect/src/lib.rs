//! Rialto's XDP steering program and its loader.
//!
//! The program (`bpf/rialto.bpf.c`) is compiled by `build.rs` and embedded
//! here. [`Steering`] loads it, fills its maps from [`rialto_tables::Steering`],
//! attaches it to an interface and registers AF_XDP sockets per receive queue.
//! Dropping it detaches the program; with no socket in the XSKMAP the program
//! passes every frame to the kernel, so a dead appliance fails open.

mod maps;

pub use maps::{Counter, Counters, Reason};

use std::{io, os::fd::AsRawFd, sync::Arc};

use aya::{
    Ebpf, EbpfError, include_bytes_aligned,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, XskMap},
    programs::{
        ProgramError, TestRun, TestRunOptions, TestRunResult, Xdp, XdpMode, xdp::XdpLinkId,
    },
};

use maps::{AddrKey, Config, CounterValue, VipKey, addr_key};

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rialto.bpf.o"));
const PROGRAM: &str = "rialto_steer";

/// How the program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (native XDP): the fast path, and what AF_XDP zero-copy needs.
    Driver,
    /// Generic XDP on the kernel's skb path: works on any device, slower.
    Skb,
}

/// Why the steering program could not be loaded, configured or attached.
#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error("permission denied: loading XDP programs needs root (CAP_BPF and CAP_NET_ADMIN)")]
    PermissionDenied,
    #[error("no such interface: {0}")]
    NoSuchInterface(String),
    #[error(
        "an XDP program is already attached to {0} (another rialto, or another tool); \
         detach it first: ip link set dev {0} xdp off"
    )]
    AlreadyAttached(String),
    #[error("{iface} does not support XDP in {mode:?} mode; try --xdp-mode skb")]
    ModeUnsupported { iface: String, mode: AttachMode },
    #[error("the kernel rejected the steering program: {0}")]
    Load(#[source] EbpfError),
    #[error("cannot attach the steering program to {iface}: {source}")]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("cannot detach the steering program: {0}")]
    Detach(#[source] ProgramError),
    #[error("cannot update the {map} map: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the steering program's test run failed: {0}")]
    TestRun(#[source] ProgramError),
    #[error("{count} entries for the {map} map, which holds {max}")]
    TooMany {
        map: &'static str,
        count: usize,
        max: u32,
    },
}

fn io_error(e: &ProgramError) -> Option<&io::Error> {
    match e {
        ProgramError::SyscallError(s) => Some(&s.io_error),
        _ => None,
    }
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> SteeringError {
    move |source| SteeringError::Map { map, source }
}

/// The address-set maps and what each holds.
fn address_sets(rules: &rialto_tables::Steering) -> [(&'static str, &Vec<std::net::IpAddr>); 3] {
    [
        ("rialto_peers", &rules.tunnel_peers),
        ("rialto_snat", &rules.snat_addrs),
        ("rialto_vteps", &rules.vteps),
    ]
}

/// The loaded steering program and its maps.
#[derive(Debug)]
pub struct Steering {
    ebpf: Ebpf,
    counters: CounterReader,
    /// While attached.
    link: Option<XdpLinkId>,
}

/// Reads the steering program's counters, from any thread, without the
/// [`Steering`] itself: lookups in a per-CPU array the program only
/// increments. Clones share the map.
#[derive(Clone)]
pub struct CounterReader(Arc<PerCpuArray<MapData, CounterValue>>);

impl std::fmt::Debug for CounterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CounterReader(rialto_counters)")
    }
}

impl CounterReader {
    /// The verdict counters, summed over CPUs.
    pub fn read(&self) -> Result<Counters, SteeringError> {
        let mut counters = Counters::default();
        for (reason, counter) in Reason::ALL.into_iter().zip(&mut counters.0) {
            let per_cpu = self
                .0
                .get(&(reason as u32), 0)
                .map_err(map_err("rialto_counters"))?;
            for [packets, bytes] in per_cpu.iter() {
                counter.packets += packets;
                counter.bytes += bytes;
            }
        }
        Ok(counters)
    }
}

impl Steering {
    /// Loads the program into the kernel and fills its maps; nothing is attached yet.
    pub fn load(rules: &rialto_tables::Steering) -> Result<Self, SteeringError> {
        let ebpf = Ebpf::load(OBJECT).map_err(|e| match &e {
            EbpfError::MapError(MapError::CreateError { io_error, .. })
                if io_error.kind() == io::ErrorKind::PermissionDenied =>
            {
                SteeringError::PermissionDenied
            }
            _ => SteeringError::Load(e),
        })?;
        let mut ebpf = ebpf;
        let map = ebpf
            .take_map("rialto_counters")
            .expect("the object defines rialto_counters");
        let counters = CounterReader(Arc::new(
            PerCpuArray::try_from(map).expect("rialto_counters is a per-CPU array"),
        ));
        let mut steering = Self {
            ebpf,
            counters,
            link: None,
        };
        steering
            .program_mut()
            .load()
            .map_err(|e| match io_error(&e) {
                Some(io) if io.kind() == io::ErrorKind::PermissionDenied => {
                    SteeringError::PermissionDenied
                }
                _ => SteeringError::Load(EbpfError::ProgramError(e)),
            })?;
        steering.check_fits(rules)?;
        steering.apply(rules)?;
        Ok(steering)
    }

    /// Writes the rules into the program's maps.
    pub fn apply(&mut self, rules: &rialto_tables::Steering) -> Result<(), SteeringError> {
        let mut vips: HashMap<_, [u8; 20], u32> = self.map("rialto_vips");
        for vip in &rules.vips {
            vips.insert(VipKey::new(vip).bytes(), 1, 0)
                .map_err(map_err("rialto_vips"))?;
        }
        for (name, addrs) in address_sets(rules) {
            let mut set: HashMap<_, AddrKey, u32> = self.map(name);
            for &addr in addrs {
                set.insert(addr_key(addr), 1, 0).map_err(map_err(name))?;
            }
        }
        let mut config: Array<_, [u8; 4]> = self.map("rialto_config");
        let value = Config {
            vxlan_port: rules.vxlan_port.to_be(),
            pad: 0,
        };
        config
            .set(0, value.bytes(), 0)
            .map_err(map_err("rialto_config"))
    }

    /// Takes the rules' entries out of the program's maps (those absent
    /// already are fine); the VXLAN port stays.
    pub fn remove(&mut self, rules: &rialto_tables::Steering) -> Result<(), SteeringError> {
        let absent = |e: &MapError| matches!(e, MapError::KeyNotFound);
        let mut vips: HashMap<_, [u8; 20], u32> = self.map("rialto_vips");
        for vip in &rules.vips {
            match vips.remove(&VipKey::new(vip).bytes()) {
                Err(e) if !absent(&e) => return Err(map_err("rialto_vips")(e)),
                _ => {}
            }
        }
        for (name, addrs) in address_sets(rules) {
            let mut set: HashMap<_, AddrKey, u32> = self.map(name);
            for &addr in addrs {
                match set.remove(&addr_key(addr)) {
                    Err(e) if !absent(&e) => return Err(map_err(name)(e)),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Attaches the program to `iface`. It stays attached until
    /// [`Steering::detach`], or until `self` is dropped.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), SteeringError> {
        let program = self.program_mut();
        let xdp_mode = match mode {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        let link = program.attach(iface, xdp_mode).map_err(|e| {
            let iface = iface.to_owned();
            if matches!(e, ProgramError::UnknownInterface { .. }) {
                return SteeringError::NoSuchInterface(iface);
            }
            match io_error(&e).and_then(io::Error::raw_os_error) {
                Some(libc::EBUSY | libc::EEXIST) => SteeringError::AlreadyAttached(iface),
                Some(libc::EOPNOTSUPP) => SteeringError::ModeUnsupported { iface, mode },
                Some(libc::EPERM) => SteeringError::PermissionDenied,
                _ => SteeringError::Attach { iface, source: e },
            }
        })?;
        self.link = Some(link);
        Ok(())
    }

    /// Detaches the program: everything goes to the kernel again. The maps
    /// stay, the counters readable.
    pub fn detach(&mut self) -> Result<(), SteeringError> {
        match self.link.take() {
            Some(link) => self
                .program_mut()
                .detach(link)
                .map_err(SteeringError::Detach),
            None => Ok(()),
        }
    }

    /// Steers frames received on `queue` into the AF_XDP socket `socket`.
    pub fn register_socket(
        &mut self,
        queue: u32,
        socket: impl AsRawFd,
    ) -> Result<(), SteeringError> {
        let mut xsks: XskMap<_> = self.map("rialto_xsks");
        xsks.set(queue, socket, 0).map_err(map_err("rialto_xsks"))
    }

    /// Stops steering frames received on `queue` into a socket: the
    /// kernel gets them again (absent already is fine).
    pub fn unregister_socket(&mut self, queue: u32) -> Result<(), SteeringError> {
        let mut xsks: XskMap<_> = self.map("rialto_xsks");
        match xsks.unset(queue) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other.map_err(map_err("rialto_xsks")),
        }
    }

    /// The verdict counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, SteeringError> {
        self.counters.read()
    }

    /// A reader of the counters for other threads.
    pub fn counter_reader(&self) -> CounterReader {
        self.counters.clone()
    }

    /// How many entries each address or VIP map holds at most, as the
    /// kernel created it: `rialto_vips`, `rialto_peers`, `rialto_snat`,
    /// `rialto_vteps`.
    pub fn capacities(&self) -> Result<[(&'static str, u32); 4], SteeringError> {
        let capacity = |name: &'static str| {
            let map = self
                .ebpf
                .map(name)
                .unwrap_or_else(|| panic!("the object defines {name}"));
            let aya::maps::Map::HashMap(data) = map else {
                panic!("{name} is a hash map");
            };
            let info = data.info().map_err(map_err(name))?;
            Ok((name, info.max_entries()))
        };
        Ok([
            capacity("rialto_vips")?,
            capacity("rialto_peers")?,
            capacity("rialto_snat")?,
            capacity("rialto_vteps")?,
        ])
    }

    /// Whether the maps hold all of `rules`, whatever they came from (the
    /// config, whose check counts the same, or the command line's flags):
    /// checked before anything is written, so nothing goes in half.
    pub fn check_fits(&self, rules: &rialto_tables::Steering) -> Result<(), SteeringError> {
        let counts = [rules.vips.len()]
            .into_iter()
            .chain(address_sets(rules).map(|(_, addrs)| addrs.len()));
        for ((map, max), count) in self.capacities()?.into_iter().zip(counts) {
            if count > max as usize {
                return Err(SteeringError::TooMany { map, count, max });
            }
        }
        Ok(())
    }

    /// Runs the program once over `frame` in the kernel (`BPF_PROG_TEST_RUN`)
    /// and returns its action (`XDP_PASS` = 2, `XDP_REDIRECT` = 4).
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, SteeringError> {
        self.run(frame, 1).map(|r| r.return_value)
    }

    /// Runs the program `repeat` times over `frame` in the kernel, in a
    /// row, and returns its action and the time one run took, on average
    /// (the kernel's own clock, around the runs alone).
    pub fn time_run(
        &self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration), SteeringError> {
        self.run(frame, repeat)
            .map(|r| (r.return_value, r.duration))
    }

    fn run(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult, SteeringError> {
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM)
            .expect("the object defines rialto_steer")
            .try_into()
            .expect("rialto_steer is an XDP program");
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        program.test_run(opts).map_err(SteeringError::TestRun)
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM)
            .expect("the object defines rialto_steer")
            .try_into()
            .expect("rialto_steer is an XDP program")
    }

    fn map<'a, M>(&'a mut self, name: &str) -> M
    where
        M: TryFrom<&'a mut aya::maps::Map>,
        M::Error: std::fmt::Debug,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("the object defines {name}"));
        M::try_from(map).unwrap_or_else(|e| panic!("{name} has the type rialto.h gives it: {e:?}"))
    }
}
