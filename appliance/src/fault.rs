//! Faults `rialto run --inject-fault` (a hidden flag) makes happen, so the
//! tests can prove what Rialto does when they happen for real.

/// A fault `--inject-fault` makes happen, for the tests of what Rialto
/// does when it happens for real.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `worker-panic:Q`: the worker of queue Q panics at its first frame.
    WorkerPanic(u32),
    /// `worker-stall:Q`: the worker of queue Q stops making progress at its
    /// first frame (until Rialto stops).
    WorkerStall(u32),
    /// `reload-stall`: workers do not take a reload's tables in time.
    ReloadStall,
    /// `map-update`: the XDP maps refuse a reload's second new entry.
    MapUpdate,
    /// `take-over-protocol`: `--take-over` says hello with another
    /// handover protocol than this Rialto's.
    TakeOverProtocol,
    /// `checker-panic`: the health checker's thread panics as it starts.
    CheckerPanic,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("worker-panic", q)) => q
                .parse()
                .map(Self::WorkerPanic)
                .map_err(|_| format!("{q:?} is not a queue number")),
            Some(("worker-stall", q)) => q
                .parse()
                .map(Self::WorkerStall)
                .map_err(|_| format!("{q:?} is not a queue number")),
            None if s == "reload-stall" => Ok(Self::ReloadStall),
            None if s == "map-update" => Ok(Self::MapUpdate),
            None if s == "take-over-protocol" => Ok(Self::TakeOverProtocol),
            None if s == "checker-panic" => Ok(Self::CheckerPanic),
            _ => Err(format!(
                "unknown fault {s:?}: worker-panic:Q, worker-stall:Q, reload-stall, map-update, \
                 take-over-protocol or checker-panic"
            )),
        }
    }
}
