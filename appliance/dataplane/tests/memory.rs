//! What a config's check promises of memory, measured: every config
//! `rialto check` accepts builds its tables (the snapshot, and a worker's
//! flow table and SNAT ports) within its `limits.memory_mib`, and a flow
//! table takes at most `FLOW_BYTES` per flow, beside its index of the
//! replies (`REPLY_PORT_BYTES` per port of the worker's, per SNAT address
//! and protocol: made with the table, its pages touched as ports are
//! taken). Measured by this test binary's own allocator, which counts the
//! bytes live and their peak.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use proptest::{prelude::*, test_runner::TestRunner};
use rialto_dataplane::{
    Pipeline,
    pipeline::{
        conntrack::{Conntrack, Names},
        snat::SnatPorts,
    },
};
use rialto_tables::{FLOW_BYTES, FlowContext, REPLY_PORT_BYTES, SnatPool, Timeouts};

/// The system allocator, counting.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only
// counters are updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(live, Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test at a time: the counters are the whole process's, so whatever
/// another test allocates meanwhile would count in a measure. Every test
/// holds it throughout.
fn alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The peak of the bytes `f` allocated beyond what was live before it,
/// and what it returned (under [`alone`]).
fn peak_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let value = f();
    (PEAK.load(Relaxed) - before, value)
}

#[test]
fn a_flow_table_takes_at_most_flow_bytes_per_flow() {
    let _alone = alone();
    let pool = SnatPool {
        v4: vec!["198.18.200.1".parse().unwrap()],
        v6: vec![],
        ports: (1024, 1024),
    };
    let names = || {
        let context = FlowContext {
            clusters: Vec::new(),
            services: Vec::new(),
        };
        Names::new(
            &context,
            &pool.v4.iter().map(|&a| a.into()).collect::<Vec<_>>(),
        )
    };
    for capacity in [1, 10, 1000, 100_000, 1 << 20] {
        let (bytes, table) = peak_of(|| {
            Conntrack::new(
                capacity,
                SnatPorts::new(&pool, 0, 1),
                Timeouts::default(),
                names(),
            )
        });
        let ports = SnatPorts::new(&pool, 0, 1).owned().len() as u64;
        let replies = pool.v4.len() as u64 * 2 * ports * REPLY_PORT_BYTES;
        let bound = capacity as u64 * FLOW_BYTES + replies + 4096;
        assert!(
            bytes as u64 <= bound,
            "{capacity} flows take {bytes} B, above {bound}"
        );
        drop(table);
    }
}

/// A config of `services` services with these table sizes, `flows` flows
/// per worker, `addresses` SNAT addresses with `ports` ports each, and a
/// cap of `mib` MiB.
fn config(flows: u32, mib: u64, sizes: &[u32], addresses: u8, ports: u16) -> String {
    let snat: Vec<String> = (1..=addresses)
        .map(|i| format!("\"198.18.200.{i}\""))
        .collect();
    let mut text = format!(
        r#"
[node]
vteps = ["198.18.1.1"]
next_hop_mac = "02:00:00:00:00:fe"
[snat]
addresses = [{}]
ports = "1024-{}"
[limits]
flows_per_worker = {flows}
memory_mib = {mib}
[[cluster]]
name = "east"
vni = 100
gateways = ["198.18.2.1"]
gateway_mac = "02:00:00:00:02:01"
"#,
        snat.join(", "),
        1023 + u32::from(ports.max(1)),
    );
    for (i, size) in sizes.iter().enumerate() {
        text += &format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"198.18.100.1:{}/TCP\"\ntable_size = {size}\nbackends = [{{ cluster = \"east\", addr = \"198.19.0.5:80\" }}]\n",
            i + 1
        );
    }
    text
}

/// The same config is accepted under a cap it fits and refused, with the
/// reason, under one it does not.
#[test]
fn the_cap_decides() {
    let _alone = alone();
    let fits = config(100_000, 64, &[65537], 1, 1000);
    assert!(rialto_rules::load("memory.toml", &fits).is_ok());
    let tight = config(100_000, 4, &[65537], 1, 1000);
    let e = rialto_rules::load("memory.toml", &tight)
        .unwrap_err()
        .to_string();
    assert!(e.contains("the tables would take 8 MiB"), "{e}");
    assert!(e.ends_with("above limits.memory_mib = 4"), "{e}");
}

/// Whatever the sizes asked for, a config the check accepts builds its
/// tables within its cap; and the check refuses some of them.
#[test]
fn every_accepted_config_builds_within_its_cap() {
    let _alone = alone();
    let strategy = (
        prop_oneof![1u32..10_000, 10_000u32..2_000_000, Just(u32::MAX)],
        1u64..=96,
        proptest::collection::vec(
            prop_oneof![Just(251u32), Just(65537), Just(1_000_003), Just(16_777_213)],
            0..6,
        ),
        1u8..=4,
        1u16..=64_000,
    );
    let (built, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = TestRunner::new(ProptestConfig::with_cases(48));
    let outcome = runner.run(&strategy, |(flows, mib, sizes, addresses, ports)| {
        let text = config(flows, mib, &sizes, addresses, ports);
        let (bytes, pipeline) = peak_of(|| {
            let tables = std::sync::Arc::new(rialto_rules::load("memory.toml", &text).ok()?);
            Some(Pipeline::balance(tables, 0, 1, [2, 0, 0, 0, 1, 1]))
        });
        let Some(pipeline) = pipeline else {
            refused.fetch_add(1, Relaxed);
            return Ok(());
        };
        drop(pipeline);
        built.fetch_add(1, Relaxed);
        prop_assert!(
            bytes as u64 <= mib << 20,
            "{bytes} B built, above the cap of {mib} MiB:\n{text}"
        );
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    let (built, refused) = (built.into_inner(), refused.into_inner());
    assert!(
        built > 0 && refused > 0,
        "{built} configs built and {refused} refused: the property needs both"
    );
}
