//! What outlives the process: each worker's flow table, and what its flows'
//! indices mean.
//!
//! A state directory (by default under `/dev/shm`, memory that outlives
//! the process but not the machine) holds, per worker, `flows-qN.bin`: a
//! header page, then the worker's flow table itself ([`Slot`]s), mapped
//! shared, so the worker writes its flows there as it goes and nothing is
//! saved at exit; and `context-ID.json`, the [`FlowContext`] the flows'
//! table indices refer to (one per config in force, written before the
//! workers take it). A `lock` file, held while Rialto runs, keeps a second
//! one off the same directory.
//!
//! After a crash or a stop, the next `rialto run` reads the tables back
//! ([`StateDir::read_saved`]): a file of another state version, layout or
//! boot is left aside; a slot marked torn (being written when the process
//! died) is skipped; a slot whose checksum does not match, or any other
//! inconsistency, means the file is corrupt and none of it is trusted. The
//! flows are carried over to the new tables as a reload would, each from
//! the saved context whose indices name its keys (a crash can cut a reload
//! short after some slots were rewritten under the next tables, before the
//! header names them), restored into new files (`.new`), which then
//! replace the old ones.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    ops::{Deref, DerefMut},
    os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use bytemuck::{Pod, Zeroable};
use nix::fcntl::{Flock, FlockArg};
use rialto_dataplane::pipeline::conntrack::{Flow, Slot, SlotState};
use rialto_tables::{FlowContext, Timeouts};

use crate::shm::SharedMap;

/// The layout of what this Rialto writes; a state directory of another
/// version is not read.
pub const STATE_VERSION: u32 = 1;

const MAGIC: [u8; 8] = *b"RIALTOFT";
/// The header takes a page: the slots that follow are page-aligned.
const HEADER_LEN: usize = 4096;

/// A flow table file's header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Header {
    magic: [u8; 8],
    version: u32,
    slot_size: u32,
    capacity: u32,
    queue: u32,
    /// The context the flows' indices refer to.
    context: u32,
    /// CRC-32 of the header with this field zero.
    check: u32,
    /// The boot the monotonic clock of the flows' expiry is of.
    boot_id: [u8; 16],
}

impl Header {
    fn checksum(&self) -> u32 {
        crc32fast::hash(bytemuck::bytes_of(&Self { check: 0, ..*self }))
    }
}

/// A worker's flow table, mapped shared from its file.
#[derive(Debug)]
pub struct MappedSlots {
    map: SharedMap,
}

impl MappedSlots {
    fn header(&mut self) -> &mut Header {
        bytemuck::from_bytes_mut(&mut self.map[..size_of::<Header>()])
    }

    /// Records that the flows' indices now refer to context `id` (a reload
    /// carried them over).
    pub fn set_context(&mut self, id: u32) {
        let header = self.header();
        header.context = id;
        header.check = header.checksum();
    }
}

impl Deref for MappedSlots {
    type Target = [Slot];

    fn deref(&self) -> &[Slot] {
        bytemuck::cast_slice(&self.map[HEADER_LEN..])
    }
}

impl DerefMut for MappedSlots {
    fn deref_mut(&mut self) -> &mut [Slot] {
        bytemuck::cast_slice_mut(&mut self.map[HEADER_LEN..])
    }
}

/// What a state directory held of a previous Rialto's flows.
#[derive(Debug, Default)]
pub struct Saved {
    /// Whole flows read back, with the context their indices refer to.
    pub flows: Vec<(FlowContext, Vec<Flow>)>,
    /// Every context saved in the directory: after a crash in the middle
    /// of a reload, some flows' slots were written under the next one.
    pub contexts: Vec<FlowContext>,
    /// Slots being written when the writer stopped: skipped.
    pub torn: u64,
    /// Flows of files that were not read, and why (one line each).
    pub discarded: Vec<String>,
    /// Flows in those files (live slots, at most).
    pub lost: u64,
}

/// A saved table read back: its context, its whole flows, its torn slots.
type Table = (FlowContext, Vec<Flow>, u64);

/// A state directory: new flow tables may be staged in it (`.new` files,
/// which nobody else writes) before it is locked; everything else needs
/// the lock ([`StateDir::lock`]), which this process then holds until it
/// drops this.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    lock: Option<Flock<File>>,
    boot_id: [u8; 16],
}

impl StateDir {
    /// Where the state of the Rialto on `iface` lives by default: one
    /// directory per network namespace and interface.
    pub fn default_for(iface: &str) -> PathBuf {
        use std::os::unix::fs::MetadataExt;
        let netns = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
        PathBuf::from(format!("/dev/shm/rialto/{iface}.{netns}"))
    }

    /// Opens `path`, creating it if need be; not locked yet.
    pub fn open(path: &Path) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("cannot create the state directory {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            lock: None,
            boot_id: boot_id()?,
        })
    }

    /// Locks it; fails, naming the holder, if another Rialto holds it.
    pub fn lock(&mut self) -> Result<()> {
        let path = &self.path;
        let lock_path = path.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(mut file, _)| {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::anyhow!(
                "another rialto (pid {}) runs with the state directory {}: stop it, or take over from it \
                 (rialto run --take-over)",
                holder.trim(),
                path.display()
            )
        })?;
        lock.set_len(0)?;
        write!(lock, "{}", std::process::id())?;
        self.lock = Some(lock);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id a context is saved under: a checksum of its text, so the
    /// same context always has the same id (known before it is saved).
    pub fn context_id(context: &FlowContext) -> u32 {
        crc32fast::hash(&Self::context_text(context))
    }

    fn context_text(context: &FlowContext) -> Vec<u8> {
        serde_json::to_vec(context).expect("a context serializes")
    }

    /// Saves the context of `tables` (if not saved already); its id goes in
    /// the flow tables' headers.
    pub fn save_context(&self, context: &FlowContext) -> Result<u32> {
        let text = Self::context_text(context);
        let id = crc32fast::hash(&text);
        let path = self.context_path(id);
        if !path.exists() {
            let staged = path.with_extension("json.new");
            std::fs::write(&staged, &text)
                .and_then(|()| std::fs::rename(&staged, &path))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(id)
    }

    /// Removes every saved context but `keep`.
    pub fn retain_contexts(&self, keep: &[u32]) {
        for (path, id) in self.files("context-", ".json") {
            if !keep.contains(&id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn context_path(&self, id: u32) -> PathBuf {
        self.path.join(format!("context-{id:08x}.json"))
    }

    /// A new, empty flow table of `capacity` slots for `queue`, whose flows
    /// will refer to context `context`: written beside the saved one until
    /// [`StateDir::commit`].
    pub fn create_flows(&self, queue: u32, capacity: usize, context: u32) -> Result<MappedSlots> {
        let path = self.flows_path(queue).with_extension("bin.new");
        let len = HEADER_LEN + capacity * size_of::<Slot>();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|f| f.set_len(len as u64).map(|()| f))
            .with_context(|| format!("cannot create {}", path.display()))?;
        let map = SharedMap::new(&file, len)
            .with_context(|| format!("cannot map {} ({len} bytes)", path.display()))?;
        let mut slots = MappedSlots { map };
        *slots.header() = Header {
            magic: MAGIC,
            version: STATE_VERSION,
            slot_size: size_of::<Slot>() as u32,
            capacity: capacity as u32,
            queue,
            context,
            check: 0,
            boot_id: self.boot_id,
        };
        slots.set_context(context);
        Ok(slots)
    }

    /// Puts the new flow tables of `queues` in place of the saved ones,
    /// and removes the tables of queues no longer served.
    pub fn commit(&self, queues: &[u32]) -> Result<()> {
        for &queue in queues {
            let path = self.flows_path(queue);
            std::fs::rename(path.with_extension("bin.new"), &path)
                .with_context(|| format!("cannot put {} in place", path.display()))?;
        }
        for (path, queue) in self.files("flows-q", ".bin") {
            if !queues.contains(&queue) {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    fn flows_path(&self, queue: u32) -> PathBuf {
        self.path.join(format!("flows-q{queue}.bin"))
    }

    /// The files named `PREFIX<number>SUFFIX` (a hexadecimal number for
    /// contexts, decimal for queues), with their number.
    fn files(&self, prefix: &str, suffix: &str) -> Vec<(PathBuf, u32)> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let radix = if prefix == "context-" { 16 } else { 10 };
        entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                let name = path.file_name()?.to_str()?;
                let number = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
                let number = u32::from_str_radix(number, radix).ok()?;
                Some((path, number))
            })
            .collect()
    }

    /// Reads back every saved flow table: whole flows, with their context,
    /// and what could not be read and why. Nothing is trusted that does
    /// not check out.
    /// A flow's expiry is held to `timeouts_bound` seconds after `now`.
    pub fn read_saved(&self, timeouts_bound: u32, now: u32) -> Saved {
        let mut saved = Saved::default();
        let mut files = self.files("flows-q", ".bin");
        files.sort();
        // A thread per table: each is read and checked on its own.
        let tables: Vec<_> = std::thread::scope(|scope| {
            let reading: Vec<_> = (files.iter())
                .map(|(path, _)| scope.spawn(|| self.read_table(path, timeouts_bound, now)))
                .collect();
            reading
                .into_iter()
                .map(|r| r.join().unwrap_or_else(|_| Err(("unreadable".into(), 0))))
                .collect()
        });
        for ((path, _), table) in files.iter().zip(tables) {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            match table {
                Ok(Some((context, flows, torn))) => {
                    saved.torn += torn;
                    saved.flows.push((context, flows));
                }
                Ok(None) => {}
                Err((why, live)) => {
                    saved
                        .discarded
                        .push(format!("{name}: {why}: {live} flows discarded"));
                    saved.lost += live;
                }
            }
        }
        for (path, _) in self.files("context-", ".json") {
            let context = std::fs::read(&path)
                .ok()
                .and_then(|text| serde_json::from_slice::<FlowContext>(&text).ok());
            if let Some(context) = context
                && !saved.contexts.contains(&context)
            {
                saved.contexts.push(context);
            }
        }
        saved
    }

    /// One table: its context, flows and torn slots; `None` if it is of
    /// another boot (its clock is gone); else why it is not trusted and
    /// how many flows it held. Only the parts of the file that hold data
    /// are read: the pages no flow ever touched are holes.
    fn read_table(
        &self,
        path: &Path,
        timeouts_bound: u32,
        now: u32,
    ) -> std::result::Result<Option<Table>, (String, u64)> {
        let mut file = File::open(path).map_err(|e| (format!("cannot open: {e}"), 0))?;
        let mut header = Header::zeroed();
        file.read_exact(bytemuck::bytes_of_mut(&mut header))
            .map_err(|e| (format!("no header: {e}"), 0))?;
        if header.magic != MAGIC {
            return Err(("not a flow table".into(), 0));
        }
        if header.version != STATE_VERSION || header.slot_size != size_of::<Slot>() as u32 {
            return Err((
                format!(
                    "state version {} (slots of {} bytes); this rialto reads version {STATE_VERSION} \
                     ({} bytes)",
                    header.version,
                    header.slot_size,
                    size_of::<Slot>()
                ),
                0,
            ));
        }
        if header.check != header.checksum() {
            return Err(("its header's checksum does not match".into(), 0));
        }
        if header.boot_id != self.boot_id {
            return Ok(None);
        }
        let end = (HEADER_LEN + header.capacity as usize * size_of::<Slot>()) as u64;
        let short = |e: &dyn std::fmt::Display| {
            (
                format!("shorter than its {} slots: {e}", header.capacity),
                0,
            )
        };
        let len = file.metadata().map_err(|e| short(&e))?.len();
        if len < end {
            return Err(short(&format!("{len} bytes")));
        }
        let (mut flows, mut torn, mut live, mut corrupt) = (Vec::new(), 0, 0, None);
        let mut chunk = vec![Slot::zeroed(); READ_CHUNK / size_of::<Slot>()];
        for (from, to) in data_extents(&file, HEADER_LEN as u64, end) {
            let mut at = from;
            while at < to {
                let n = ((to - at) as usize).min(READ_CHUNK) / size_of::<Slot>();
                let bytes = bytemuck::cast_slice_mut(&mut chunk[..n]);
                file.read_exact_at(bytes, at).map_err(|e| short(&e))?;
                let first = (at - HEADER_LEN as u64) as usize / size_of::<Slot>();
                for (i, slot) in chunk[..n].iter().enumerate() {
                    live += u64::from(slot.mark == Slot::LIVE);
                    match slot.state() {
                        SlotState::Empty => {}
                        SlotState::Torn => torn += 1,
                        // Expiry is not checksummed (every packet moves it):
                        // it is held to what the timeouts in force allow.
                        SlotState::Live => flows.push(Flow {
                            expires: slot.flow.expires.min(now.saturating_add(timeouts_bound)),
                            ..slot.flow
                        }),
                        SlotState::Corrupt => {
                            corrupt = corrupt.or(Some(first + i));
                        }
                    }
                }
                at += (n * size_of::<Slot>()) as u64;
            }
        }
        if let Some(i) = corrupt {
            return Err((format!("slot {i} does not check out"), live));
        }
        let context = std::fs::read(self.context_path(header.context))
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_slice(&text).map_err(|e| e.to_string()))
            .map_err(|e| {
                (
                    format!("its context {:08x} cannot be read ({e})", header.context),
                    live,
                )
            })?;
        Ok(Some((context, flows, torn)))
    }
}

/// How much of a flow table is read at a time (a whole number of slots).
const READ_CHUNK: usize = 1 << 20;

/// The ranges of `file` between `from` and `to` that hold data (tmpfs and
/// most file systems answer `SEEK_DATA` and `SEEK_HOLE`; one that does not
/// makes it all one range), page-aligned.
fn data_extents(file: &File, from: u64, to: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{Whence, lseek};
    let seek = |at: u64, whence| lseek(file, at as i64, whence).ok().map(|at| at as u64);
    let mut extents = Vec::new();
    let mut at = from;
    while at < to {
        // No more data (ENXIO), or no answer: what is left.
        let Some(data) = seek(at, Whence::SeekData) else {
            if extents.is_empty() && seek(at, Whence::SeekHole).is_none() {
                extents.push((at, to));
            }
            break;
        };
        if data >= to {
            break;
        }
        let hole = seek(data, Whence::SeekHole).unwrap_or(to).min(to);
        extents.push((data, hole));
        at = hole;
    }
    extents
}

/// The longest a flow may be remembered without traffic under `timeouts`.
pub fn longest(timeouts: &Timeouts) -> u32 {
    [
        timeouts.tcp_syn,
        timeouts.tcp_established,
        timeouts.tcp_closing,
        timeouts.udp,
        timeouts.icmp,
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
fn boot_id() -> Result<[u8; 16]> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("cannot read this boot's id")?;
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    let mut id = [0; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    if id == [0; 16] {
        bail!("this boot's id is unreadable: {text:?}");
    }
    Ok(id)
}

/// What became of the flows a previous Rialto left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Resumed {
    /// Flows back in a worker's table, as they were.
    pub recovered: u64,
    /// Expired meanwhile.
    pub expired: u64,
    /// Whose backend, service or cluster the config in force no longer has
    /// (as a reload would have removed them).
    pub gone: u64,
    /// Whose SNAT address or port the config in force no longer has.
    pub no_port: u64,
    /// A flow with the same key or SNAT port came first.
    pub duplicate: u64,
    /// Beyond the new flow tables' size.
    pub full: u64,
    /// Slots being written when the previous Rialto stopped.
    pub torn: u64,
    /// In files that could not be trusted (see the log).
    pub discarded: u64,
    /// How long reading and restoring them took, in milliseconds.
    pub millis: u64,
    /// After a take-over: how long from asking the running Rialto to let
    /// go to serving, in milliseconds (the traffic went to the kernel
    /// meanwhile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub take_over_millis: Option<u64>,
}

/// Restores `saved` into the workers' empty tables (`pipelines[i]` is
/// worker `i` of them all) under `tables`: each flow is carried over as a
/// reload would carry it, and goes to the worker whose slice of the SNAT
/// ports holds its port.
pub fn resume(
    saved: Saved,
    tables: &rialto_tables::Snapshot,
    pipelines: &mut [&mut rialto_dataplane::Pipeline<MappedSlots>],
    now_ns: u64,
) -> Resumed {
    use rialto_dataplane::pipeline::snat::SnatPorts;
    let mut resumed = Resumed {
        torn: saved.torn,
        discarded: saved.lost,
        ..Resumed::default()
    };
    let workers = pipelines.len();
    let owner = SnatPorts::new(&tables.snat, 0, workers as u32);
    let total = saved.flows.iter().map(|(_, flows)| flows.len()).sum();
    let mut per_worker: Vec<Vec<Flow>> = (0..workers).map(|_| Vec::with_capacity(total)).collect();
    let (flows, gone) = carry_saved(&saved, tables);
    resumed.gone = gone;
    for flow in flows {
        let worker = owner.owner(flow.reverse.dst_port) as usize;
        per_worker[worker.min(workers - 1)].push(flow);
    }
    // Each worker's table on a thread of its own, as the workers run.
    let restored: Vec<_> = std::thread::scope(|scope| {
        let restoring: Vec<_> = (pipelines.iter_mut().zip(per_worker))
            .map(|(pipeline, flows)| scope.spawn(move || pipeline.restore(flows, now_ns)))
            .collect();
        restoring
            .into_iter()
            .map(|r| r.join().expect("a restore does not panic"))
            .collect()
    });
    for done in restored.into_iter().flatten() {
        resumed.recovered += done.restored;
        resumed.expired += done.expired;
        resumed.no_port += done.no_port;
        resumed.duplicate += done.duplicate;
        resumed.full += done.full;
    }
    resumed
}

/// The saved flows carried to `tables`, and how many could not be: each
/// from the context its table's header names; or, if its keys are not
/// what its indices name there, from another context saved beside it
/// whose they are (its slot was rewritten under the next tables by a
/// reload that a crash cut short, before the header named them).
fn carry_saved(saved: &Saved, tables: &rialto_tables::Snapshot) -> (Vec<Flow>, u64) {
    use rialto_dataplane::pipeline::balance::Carry;
    let others: Vec<Carry> = (saved.contexts.iter())
        .map(|context| Carry::new(context, tables))
        .collect();
    let (mut carried, mut gone) = (Vec::new(), 0);
    for (context, flows) in &saved.flows {
        let carry = Carry::new(context, tables);
        for flow in flows {
            // A context that names the flow's keys carries it as any other
            // that does; `Carry::flow` refuses it from one that does not.
            match (carry.flow(flow)).or_else(|| others.iter().find_map(|c| c.flow(flow))) {
                Some(flow) => carried.push(flow),
                None => gone += 1,
            }
        }
    }
    (carried, gone)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rialto_dataplane::{OwnedFrame, pipeline::balance::Balancer};
    use rialto_fixtures::{self as fixtures, L4};

    use super::*;

    /// A crash in the middle of a reload leaves, in a table whose header
    /// names the old context, slots the reload rewrote under the new
    /// tables. Carried by their indices from the old context, those flows
    /// would get another service's backend; carried from the context that
    /// names their keys, every flow comes back as it was.
    #[test]
    fn flows_rewritten_by_a_reload_cut_short_come_back_by_their_own_context() {
        let old = fixtures::compile(fixtures::CONFIG);
        // The same services, the first moved last: every index changes.
        let mut next = (*old).clone();
        next.services.rotate_left(1);
        let n = next.services.len() as u32;
        for service in next.vips.values_mut() {
            *service = (*service + n - 1) % n;
        }
        let next = Arc::new(next);
        let mut balancer = Balancer::new(Arc::clone(&old), 0, 1, fixtures::NODE_MAC);
        let now = fixtures::START * 1_000_000_000;
        for (vip, l4) in [
            (fixtures::WEB, L4::Tcp(40000, 80, "S", 1)),
            (fixtures::ECHO, L4::Udp(40001, 7)),
        ] {
            let v4 = fixtures::Ip::V4 {
                src: fixtures::CLIENT,
                dst: vip,
                ttl: 64,
            };
            let mut frame = OwnedFrame::new(&fixtures::from_router(&fixtures::ip(v4, l4, b"")));
            frame.with(|f| balancer.process(f, now));
        }
        let made: Vec<Flow> = balancer.flows().iter().map(|(_, f)| *f).collect();
        assert_eq!(made.len(), 2, "a flow per service");
        let (in_old, in_next) = (FlowContext::of(&old), FlowContext::of(&next));
        let carry = rialto_dataplane::pipeline::balance::Carry::new(&in_old, &next);
        let rewritten = carry.flow(&made[1]).expect("kept by the reload");
        assert_ne!(rewritten.service, made[1].service);
        // Its indices name another service in the old context: not carried
        // from it.
        let from_old = rialto_dataplane::pipeline::balance::Carry::new(&in_old, &old);
        assert_eq!(from_old.flow(&rewritten), None);
        // The header still names the old context: the first flow is as
        // the old tables made it, the second as the reload rewrote it.
        let saved = |contexts| Saved {
            flows: vec![(in_old.clone(), vec![made[0], rewritten])],
            contexts,
            ..Saved::default()
        };
        let (flows, gone) = carry_saved(&saved(vec![in_old.clone(), in_next.clone()]), &old);
        assert_eq!((flows, gone), (made.clone(), 0));
        // Without the next context saved, the rewritten flow is dropped,
        // not given another service's backend.
        let (flows, gone) = carry_saved(&saved(vec![in_old.clone()]), &old);
        assert_eq!((flows, gone), (vec![made[0]], 1));
    }
}
