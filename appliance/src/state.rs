//! What outlives the process: each worker's flow table, and what its flows'
//! indices mean.
//!
//! A state directory (by default under `/dev/shm`, memory that outlives
//! the process but not the machine) holds, per worker, `flows-qN.bin`: a
//! header page, then the worker's flow table itself ([`Slot`]s), mapped
//! shared, so the worker writes its flows there as it goes and nothing is
//! saved at exit; and what the slots' indices name (one of each per config
//! in force, written before the workers take it): `context-ID.json`, the
//! [`FlowContext`], and `snat-ID.json`, the fleet's SNAT addresses in
//! order. A slot's mark says which of two generations of names it is
//! packed under, and the header names both ([`NamesId`]): a reload that
//! changes them packs every slot again under the next, so a crash in the
//! middle of one leaves slots of both, each read under its own. A `lock`
//! file, held while Rialto runs, keeps a second one off the same directory.
//!
//! After a crash or a stop, the next `rialto run` reads the tables back
//! ([`StateDir::read_saved`]): a file of another state version, layout or
//! boot is left aside (version 2's, these slots checked by CRC-32, and
//! version 1's, whole flows in 128-byte slots, are still read: an upgrade
//! keeps its flows); a slot marked torn (being written when the process
//! died) is skipped; a slot whose check does not match, or any other
//! inconsistency, means the file is corrupt and none of it is trusted.
//! The flows are carried over to the new tables as a reload would, each
//! from the saved context whose indices name its keys (a version 1 table
//! holds whole flows, and a crash could cut its reload short after some
//! slots were rewritten under the next tables, before its header named
//! them), restored into new files (`.new`), which then replace the old
//! ones.

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
use rialto_dataplane::pipeline::{
    balance,
    conntrack::{Flow, FlowMemory, Names, Slot, SlotState},
};
use rialto_tables::{FlowContext, Snapshot, Timeouts};

use crate::shm::Mapped;

/// The layout of what this Rialto writes.
pub const STATE_VERSION: u32 = 3;
/// The layouts it reads, newest first: an upgrade from a Rialto that wrote
/// version 2 or 1 keeps its flows.
pub const STATE_VERSIONS_READ: [u32; 3] = [STATE_VERSION, 2, 1];

/// A slot's check in state version 2 (read only): the low half of the
/// CRC-32 of the bytes version 3 checks by XXH3 ([`Slot::check_of`]).
fn check_v2(slot: &Slot) -> u16 {
    crc32fast::hash(slot.checked()) as u16
}

const MAGIC: [u8; 8] = *b"RIALTOFT";
/// The header takes a page: the slots that follow are page-aligned.
const HEADER_LEN: usize = 4096;

/// What a table's slots are packed under: the ids of a saved context and
/// of a saved SNAT list ([`StateDir::save_names`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NamesId {
    pub context: u32,
    pub snat: u32,
}

/// A flow table file's header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Header {
    magic: [u8; 8],
    version: u32,
    slot_size: u32,
    capacity: u32,
    queue: u32,
    /// CRC-32 of the header with this field zero.
    check: u32,
    /// The boot the monotonic clock of the flows' expiry is of.
    boot_id: [u8; 16],
    /// What the live slots of each generation (the low bit of their
    /// mark) are packed under.
    names: [NamesId; 2],
}

impl Header {
    fn checksum(&self) -> u32 {
        crc32fast::hash(bytemuck::bytes_of(&Self { check: 0, ..*self }))
    }
}

/// A flow table file's header in state version 1 (read only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct HeaderV1 {
    magic: [u8; 8],
    version: u32,
    slot_size: u32,
    capacity: u32,
    queue: u32,
    /// The context the flows' indices refer to.
    context: u32,
    check: u32,
    boot_id: [u8; 16],
}

impl HeaderV1 {
    fn checksum(&self) -> u32 {
        crc32fast::hash(bytemuck::bytes_of(&Self { check: 0, ..*self }))
    }
}

/// A slot of state version 1 (read only): the whole [`Flow`], in two
/// cache lines.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct SlotV1 {
    /// 0 empty, 1 being written, 2 live.
    mark: u32,
    /// CRC-32 of the flow's fields that only a reload changes (those
    /// before its expiry).
    check: u32,
    flow: Flow,
}

impl SlotV1 {
    fn check_of(flow: &Flow) -> u32 {
        crc32fast::hash(&bytemuck::bytes_of(flow)[..std::mem::offset_of!(Flow, expires)])
    }

    fn state(&self) -> SlotState {
        match self.mark {
            0 => SlotState::Empty,
            1 => SlotState::Torn,
            2 if self.check == Self::check_of(&self.flow)
                && self.flow.state.is_valid()
                && self.flow.forward.pad == [0; 3]
                && self.flow.reverse.pad == [0; 3] =>
            {
                SlotState::Live
            }
            _ => SlotState::Corrupt,
        }
    }
}

/// A worker's flow table, mapped shared from its file.
#[derive(Debug)]
pub struct MappedSlots {
    map: Mapped<Slot>,
}

impl MappedSlots {
    fn header(&mut self) -> &mut Header {
        bytemuck::from_bytes_mut(&mut self.map.head_mut()[..size_of::<Header>()])
    }

    /// Records that the slots of `generation` are packed under `names`:
    /// before a reload packs any slot under them.
    pub fn set_names(&mut self, generation: u8, names: NamesId) {
        let header = self.header();
        header.names[usize::from(generation & 1)] = names;
        header.check = header.checksum();
    }
}

impl Deref for MappedSlots {
    type Target = [Slot];

    fn deref(&self) -> &[Slot] {
        &self.map
    }
}

impl DerefMut for MappedSlots {
    fn deref_mut(&mut self) -> &mut [Slot] {
        &mut self.map
    }
}

/// The slots in their file, the indexes in anonymous memory.
impl FlowMemory for MappedSlots {
    type Array<T: Pod + std::fmt::Debug> = Mapped<T>;

    fn zeroed<T: Pod + std::fmt::Debug>(len: usize) -> Mapped<T> {
        Mapped::anon(len)
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

/// A saved table read back.
#[derive(Debug, Default)]
struct Table {
    /// Its whole flows with the context their indices refer to (one per
    /// generation of its slots).
    flows: Vec<(FlowContext, Vec<Flow>)>,
    /// Slots being written when the writer stopped.
    torn: u64,
    /// Flows of a generation whose names cannot be read: why, and how
    /// many. The other generation's are read all the same.
    discarded: Vec<(String, u64)>,
}

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

    /// The ids the names of `tables` are saved under: checksums of their
    /// text, so the same names always have the same ids (known before they
    /// are saved). The context's is also what the fleet's peers compare.
    pub fn names_id(tables: &Snapshot) -> NamesId {
        let (context, snat) = Self::names_text(tables);
        NamesId {
            context: crc32fast::hash(&context),
            snat: crc32fast::hash(&snat),
        }
    }

    /// The context and the SNAT list of `tables`, as saved.
    fn names_text(tables: &Snapshot) -> (Vec<u8>, Vec<u8>) {
        let context = serde_json::to_vec(&FlowContext::of(tables)).expect("a context serializes");
        let snat = serde_json::to_vec(&balance::snat_list(tables)).expect("addresses serialize");
        (context, snat)
    }

    /// Saves what the slots' indices name under `tables` (what is not
    /// saved already); its ids go in the flow tables' headers.
    pub fn save_names(&self, tables: &Snapshot) -> Result<NamesId> {
        let (context, snat) = Self::names_text(tables);
        Ok(NamesId {
            context: self.save(CONTEXT, &context)?,
            snat: self.save(SNAT, &snat)?,
        })
    }

    /// Saves `text` as `KIND-ID.json`, ID its checksum, unless it is.
    fn save(&self, kind: &str, text: &[u8]) -> Result<u32> {
        let id = crc32fast::hash(text);
        let path = self.names_path(kind, id);
        if !path.exists() {
            let staged = path.with_extension("json.new");
            std::fs::write(&staged, text)
                .and_then(|()| std::fs::rename(&staged, &path))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(id)
    }

    /// Removes every saved context and SNAT list but those of `keep`.
    pub fn retain_names(&self, keep: NamesId) {
        for (kind, keep) in [(CONTEXT, keep.context), (SNAT, keep.snat)] {
            for (path, id) in self.files(&format!("{kind}-"), ".json") {
                if id != keep {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }

    fn names_path(&self, kind: &str, id: u32) -> PathBuf {
        self.path.join(format!("{kind}-{id:08x}.json"))
    }

    /// Saved `KIND-ID.json`, read back.
    fn read_names<T: serde::de::DeserializeOwned>(&self, kind: &str, id: u32) -> Result<T, String> {
        std::fs::read(self.names_path(kind, id))
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_slice(&text).map_err(|e| e.to_string()))
            .map_err(|e| format!("its {kind} {id:08x} cannot be read ({e})"))
    }

    /// Checks that the state directory's filesystem has room for flow
    /// tables of `capacity` slots for `queues` queues (beside the saved
    /// ones, which a take-over keeps until it commits): the files are
    /// sparse, and a full tmpfs would fail a write to a slot with SIGBUS,
    /// mid-traffic, instead of at start with a reason.
    pub fn check_room(&self, queues: usize, capacity: usize) -> Result<()> {
        let needed = (queues * (HEADER_LEN + capacity * size_of::<Slot>())) as u64;
        let fs = nix::sys::statvfs::statvfs(&self.path)
            .with_context(|| format!("cannot read {}'s filesystem", self.path.display()))?;
        let free = fs.blocks_available() * fs.fragment_size();
        if free < needed {
            let mib = |b: u64| b.div_ceil(1 << 20);
            bail!(
                "{}: {} MiB free, and the flow tables take {} MiB ({queues} × {capacity} \
                 slots): give its filesystem more room (tmpfs size=) or lower \
                 limits.flows_per_worker",
                self.path.display(),
                mib(free),
                mib(needed)
            );
        }
        Ok(())
    }

    /// A new, empty flow table of `capacity` slots for `queue`, whose flows
    /// will be packed under `names`: written beside the saved one until
    /// [`StateDir::commit`].
    pub fn create_flows(&self, queue: u32, capacity: usize, names: NamesId) -> Result<MappedSlots> {
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
        let map = Mapped::file(&file, HEADER_LEN, capacity)
            .with_context(|| format!("cannot map {} ({len} bytes)", path.display()))?;
        let mut slots = MappedSlots { map };
        *slots.header() = Header {
            magic: MAGIC,
            version: STATE_VERSION,
            slot_size: size_of::<Slot>() as u32,
            capacity: capacity as u32,
            queue,
            check: 0,
            boot_id: self.boot_id,
            names: [NamesId::default(); 2],
        };
        slots.set_names(0, names);
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

    /// The files named `PREFIX<number>SUFFIX` (a decimal number for
    /// queues, hexadecimal for the rest), with their number.
    fn files(&self, prefix: &str, suffix: &str) -> Vec<(PathBuf, u32)> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let radix = if prefix == "flows-q" { 10 } else { 16 };
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
                Ok(Some(table)) => {
                    saved.torn += table.torn;
                    saved.flows.extend(table.flows);
                    for (why, lost) in table.discarded {
                        saved
                            .discarded
                            .push(format!("{name}: {why}: {lost} flows discarded"));
                        saved.lost += lost;
                    }
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
        for (path, _) in self.files(&format!("{CONTEXT}-"), ".json") {
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

    /// One table: its flows by context, and its torn slots; `None` if it
    /// is of another boot (its clock is gone); else why it is not trusted
    /// and how many flows it held. A flow's expiry is held to
    /// `timeouts_bound` seconds after `now` (it is not checked: every
    /// packet moves it).
    fn read_table(
        &self,
        path: &Path,
        timeouts_bound: u32,
        now: u32,
    ) -> std::result::Result<Option<Table>, (String, u64)> {
        let mut file = File::open(path).map_err(|e| (format!("cannot open: {e}"), 0))?;
        let mut page = [0; size_of::<Header>()];
        file.read_exact(&mut page)
            .map_err(|e| (format!("no header: {e}"), 0))?;
        if page[..8] != MAGIC {
            return Err(("not a flow table".into(), 0));
        }
        let held = |flow: &Flow| Flow {
            expires: flow.expires.min(now.saturating_add(timeouts_bound)),
            ..*flow
        };
        match u32::from_ne_bytes([page[8], page[9], page[10], page[11]]) {
            1 => {
                let header: HeaderV1 = bytemuck::pod_read_unaligned(&page[..size_of::<HeaderV1>()]);
                let checks = header.check == header.checksum();
                if !self.of_this_boot(
                    checks,
                    header.boot_id,
                    header.slot_size,
                    size_of::<SlotV1>(),
                )? {
                    return Ok(None);
                }
                let mut flows = Vec::new();
                let torn = read_slots(&file, header.capacity, SlotV1::state, |slot: &SlotV1| {
                    flows.push(held(&slot.flow));
                })?;
                let context = self
                    .read_names(CONTEXT, header.context)
                    .map_err(|e| (e, flows.len() as u64))?;
                Ok(Some(Table {
                    flows: vec![(context, flows)],
                    torn,
                    discarded: Vec::new(),
                }))
            }
            version @ (2 | STATE_VERSION) => {
                let header: Header = bytemuck::pod_read_unaligned(&page);
                let checks = header.check == header.checksum();
                if !self.of_this_boot(
                    checks,
                    header.boot_id,
                    header.slot_size,
                    size_of::<Slot>(),
                )? {
                    return Ok(None);
                }
                // What each generation's slots are packed under; an error
                // only if a slot of it is live, and then only its slots are
                // lost.
                let names = header.names.map(|id| {
                    let context: FlowContext = self.read_names(CONTEXT, id.context)?;
                    let snat: Vec<std::net::IpAddr> = self.read_names(SNAT, id.snat)?;
                    let names = Names::new(&context, &snat);
                    Ok::<_, String>((context, names))
                });
                let mut flows = [Vec::new(), Vec::new()];
                let mut unnamed = [0; 2];
                let mut nameless = 0;
                // Version 2 differs only by its slots' check.
                let state = |slot: &Slot| match version {
                    2 => slot.slot_state_by(check_v2),
                    _ => slot.slot_state(),
                };
                let torn = read_slots(&file, header.capacity, state, |slot: &Slot| {
                    let generation = usize::from(slot.generation());
                    match &names[generation] {
                        Ok((_, names)) => match names.unpack(slot) {
                            Some(flow) => flows[generation].push(held(&flow)),
                            None => nameless += 1,
                        },
                        Err(_) => unnamed[generation] += 1,
                    }
                })?;
                let live = (flows.iter().map(Vec::len).sum::<usize>() as u64)
                    + unnamed[0]
                    + unnamed[1]
                    + nameless;
                // Inconsistent with names that are there: nothing of it is trusted.
                if nameless > 0 {
                    return Err(("a live slot names nothing under its names".into(), live));
                }
                let discarded = (names.iter().zip(unnamed))
                    .filter(|&(_, lost)| lost > 0)
                    .filter_map(|(names, lost)| Some((names.as_ref().err()?.clone(), lost)))
                    .collect();
                Ok(Some(Table {
                    flows: (names.into_iter().zip(flows))
                        .filter(|(_, flows)| !flows.is_empty())
                        .filter_map(|(names, flows)| Some((names.ok()?.0, flows)))
                        .collect(),
                    torn,
                    discarded,
                }))
            }
            version => Err((
                format!(
                    "state version {version}; this rialto reads versions {STATE_VERSIONS_READ:?}"
                ),
                0,
            )),
        }
    }

    /// Whether a header (whether its checksum matches, its boot, its slots'
    /// size against the `expected` one) is of this boot; an error if it is
    /// not to be trusted.
    fn of_this_boot(
        &self,
        checks: bool,
        boot_id: [u8; 16],
        slot_size: u32,
        expected: usize,
    ) -> std::result::Result<bool, (String, u64)> {
        if slot_size != expected as u32 {
            return Err((format!("slots of {slot_size} bytes, not {expected}"), 0));
        }
        if !checks {
            return Err(("its header's checksum does not match".into(), 0));
        }
        Ok(boot_id == self.boot_id)
    }
}

/// What a context's file is named after.
const CONTEXT: &str = "context";
/// What a SNAT list's file is named after.
const SNAT: &str = "snat";

/// Reads the `capacity` slots of type `T` that follow the header of
/// `file`, where it holds data (the pages no flow ever touched are holes),
/// and gives each live one to `live`; says how many were torn. A slot that
/// does not check out makes the whole table untrusted: the error says
/// which, and how many flows the table held.
fn read_slots<T: Pod>(
    file: &File,
    capacity: u32,
    state: impl Fn(&T) -> SlotState,
    mut live: impl FnMut(&T),
) -> std::result::Result<u64, (String, u64)> {
    let size = size_of::<T>();
    let end = (HEADER_LEN + capacity as usize * size) as u64;
    let short = |e: &dyn std::fmt::Display| (format!("shorter than its {capacity} slots: {e}"), 0);
    let len = file.metadata().map_err(|e| short(&e))?.len();
    if len < end {
        return Err(short(&format!("{len} bytes")));
    }
    let (mut torn, mut held, mut corrupt) = (0, 0, None);
    let mut chunk = vec![T::zeroed(); READ_CHUNK / size];
    // Extents are of pages; slots may straddle them: whole slots are read.
    let slot_of = |at: u64| (at - HEADER_LEN as u64) / size as u64;
    for (from, to) in data_extents(file, HEADER_LEN as u64, end) {
        let mut slot = slot_of(from);
        let last = slot_of(to + size as u64 - 1).min(u64::from(capacity));
        while slot < last {
            let n = ((last - slot) as usize).min(chunk.len());
            let bytes = bytemuck::cast_slice_mut(&mut chunk[..n]);
            let at = HEADER_LEN as u64 + slot * size as u64;
            file.read_exact_at(bytes, at).map_err(|e| short(&e))?;
            for (i, s) in chunk[..n].iter().enumerate() {
                match state(s) {
                    SlotState::Empty => {}
                    SlotState::Torn => torn += 1,
                    SlotState::Live => {
                        held += 1;
                        live(s);
                    }
                    SlotState::Corrupt => {
                        held += 1;
                        corrupt = corrupt.or(Some(slot as usize + i));
                    }
                }
            }
            slot += n as u64;
        }
    }
    match corrupt {
        Some(i) => Err((format!("slot {i} does not check out"), held)),
        None => Ok(torn),
    }
}

/// How many bytes of a flow table are read at a time, at most.
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
    /// (as a reload would have removed them), or that its tables cannot
    /// name.
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
        // Carried to the tables in force, so named by them: none, unless
        // something is wrong.
        resumed.gone += done.unnamed;
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

    /// The fixtures' tables, and the same services with the first moved
    /// last: every service's index changes.
    fn old_and_next() -> (Arc<Snapshot>, Arc<Snapshot>) {
        let old = fixtures::compile(fixtures::CONFIG);
        let mut next = (*old).clone();
        next.services.rotate_left(1);
        let n = next.services.len() as u32;
        for service in next.vips.values_mut() {
            *service = (*service + n - 1) % n;
        }
        (old, Arc::new(next))
    }

    /// Two flows made by `balancer` (TCP to web, UDP to echo), as its table
    /// holds them.
    fn two_flows<S: FlowMemory>(balancer: &mut Balancer<S>) -> Vec<Flow> {
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
        let made: Vec<Flow> = balancer.flows().iter().map(|(_, f)| f).collect();
        assert_eq!(made.len(), 2, "a flow per service");
        made
    }

    /// A state directory of a test's own, removed when dropped.
    struct TestDir(StateDir);

    impl TestDir {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("rialto-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Self(StateDir::open(&path).expect("a state directory"))
        }

        /// Its flows read back (none expired).
        fn read_saved(&self, tables: &Snapshot) -> Saved {
            let saved = self
                .0
                .read_saved(longest(&tables.timeouts), fixtures::START as u32);
            assert_eq!(saved.discarded, Vec::<String>::new());
            saved
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.path());
        }
    }

    /// A table cut short in the middle of a reload (see the test below),
    /// in a directory of its own.
    struct CutShort {
        dir: TestDir,
        old: Arc<Snapshot>,
        next: Arc<Snapshot>,
        /// The old and the next tables' names.
        ids: [NamesId; 2],
        /// The two flows as made, and as the reload rewrote them.
        made: Vec<Flow>,
        rewritten: Vec<(u32, Flow)>,
    }

    fn cut_short(name: &str) -> CutShort {
        let (old, next) = old_and_next();
        let dir = TestDir::new(name);
        let state = &dir.0;
        let ids = [
            state.save_names(&old).unwrap(),
            state.save_names(&next).unwrap(),
        ];
        let slots = state.create_flows(0, 16, ids[0]).unwrap();
        let mut balancer = Balancer::with_slots(slots, Arc::clone(&old), 0, 1, fixtures::NODE_MAC);
        let made = two_flows(&mut balancer);
        // The reload: the header names the next generation's names, and
        // every slot is packed again under them...
        let generation = balancer.flows().generation();
        balancer.storage_mut().set_names(generation ^ 1, ids[1]);
        balancer.reload(Arc::clone(&next));
        let rewritten: Vec<(u32, Flow)> = balancer.flows().iter().collect();
        assert_ne!(rewritten[1].1.service, made[1].service);
        // ...but the crash came before the first slot's turn: it is as the
        // old tables packed it.
        let packed = balance::names(&old).pack(&made[0]).expect("packs");
        balancer.storage_mut()[rewritten[0].0 as usize] = Slot {
            mark: Slot::LIVE | generation,
            check: Slot::check_of(&packed),
            ..packed
        };
        drop(balancer);
        state.commit(&[0]).unwrap();
        CutShort {
            dir,
            old,
            next,
            ids,
            made,
            rewritten,
        }
    }

    /// A crash in the middle of a reload leaves slots packed under the old
    /// names and slots packed under the next: the header names both, each
    /// slot's mark says which, and every flow is read back as it was.
    #[test]
    fn a_reload_cut_short_leaves_each_slot_read_under_its_own_names() {
        let CutShort {
            dir,
            old,
            next,
            made,
            rewritten,
            ..
        } = cut_short("cut-short");
        let saved = dir.read_saved(&old);
        assert_eq!(
            saved.flows,
            vec![
                (FlowContext::of(&old), vec![made[0]]),
                (FlowContext::of(&next), vec![rewritten[1].1]),
            ]
        );
        assert_eq!(carry_saved(&saved, &old), (made, 0));
    }

    /// Names that cannot be read (their file gone) lose only the flows of
    /// their generation, counted and said why; the other generation's are
    /// read back as they were.
    #[test]
    fn a_generation_whose_names_are_gone_loses_only_its_own_flows() {
        let CutShort {
            dir,
            old,
            ids,
            made,
            ..
        } = cut_short("names-gone");
        let state = &dir.0;
        std::fs::remove_file(state.names_path(CONTEXT, ids[1].context)).unwrap();
        let saved = state.read_saved(longest(&old.timeouts), fixtures::START as u32);
        assert_eq!(saved.flows, vec![(FlowContext::of(&old), vec![made[0]])]);
        assert_eq!(saved.lost, 1);
        let context = format!("{:08x}", ids[1].context);
        assert!(
            matches!(&saved.discarded[..], [line] if line.contains(&context)
                && line.contains("cannot be read")
                && line.ends_with(": 1 flows discarded")),
            "{:?}",
            saved.discarded
        );
    }

    /// A table of state version 1 (whole flows in 128-byte slots, what the
    /// Rialto before wrote) is read back and its flows carried over: an
    /// upgrade keeps them.
    #[test]
    fn a_version_1_table_is_read_back() {
        let old = fixtures::compile(fixtures::CONFIG);
        let made = two_flows(&mut Balancer::new(
            Arc::clone(&old),
            0,
            1,
            fixtures::NODE_MAC,
        ));
        let dir = TestDir::new("version-1");
        let state = &dir.0;
        // Version 1 saved the context alike.
        let context = state.save_names(&old).unwrap().context;
        let mut header = HeaderV1 {
            magic: MAGIC,
            version: 1,
            slot_size: size_of::<SlotV1>() as u32,
            capacity: 4,
            queue: 0,
            context,
            check: 0,
            boot_id: state.boot_id,
        };
        header.check = header.checksum();
        let mut file = vec![0; HEADER_LEN + 4 * size_of::<SlotV1>()];
        file[..size_of::<HeaderV1>()].copy_from_slice(bytemuck::bytes_of(&header));
        for (i, flow) in [(1, made[0]), (3, made[1])] {
            let slot = SlotV1 {
                mark: 2,
                check: SlotV1::check_of(&flow),
                flow,
            };
            let at = HEADER_LEN + i * size_of::<SlotV1>();
            file[at..at + size_of::<SlotV1>()].copy_from_slice(bytemuck::bytes_of(&slot));
        }
        std::fs::write(state.path().join("flows-q0.bin"), file).unwrap();
        let saved = dir.read_saved(&old);
        assert_eq!(saved.flows, vec![(FlowContext::of(&old), made.clone())]);
        assert_eq!(carry_saved(&saved, &old), (made, 0));
    }

    /// A table of state version 2 (this layout, each slot checked by
    /// CRC-32, what the Rialto before wrote) is read back and its flows
    /// carried over: an upgrade keeps them. Read as this version's, the
    /// same slots do not check out: the version says which check is theirs.
    #[test]
    fn a_version_2_table_is_read_back() {
        let old = fixtures::compile(fixtures::CONFIG);
        let dir = TestDir::new("version-2");
        let state = &dir.0;
        let names = state.save_names(&old).unwrap();
        let slots = state.create_flows(0, 16, names).unwrap();
        let mut balancer = Balancer::with_slots(slots, Arc::clone(&old), 0, 1, fixtures::NODE_MAC);
        let made = two_flows(&mut balancer);
        let written = |version: u32, balancer: &mut Balancer<MappedSlots>| {
            let storage = balancer.storage_mut();
            let header = storage.header();
            header.version = version;
            header.check = header.checksum();
            for slot in storage.iter_mut().filter(|slot| slot.is_live()) {
                slot.check = check_v2(slot);
            }
        };
        written(2, &mut balancer);
        state.commit(&[0]).unwrap();
        let saved = dir.read_saved(&old);
        assert_eq!(saved.flows, vec![(FlowContext::of(&old), made.clone())]);
        assert_eq!(carry_saved(&saved, &old), (made, 0));
        written(STATE_VERSION, &mut balancer);
        let saved = state.read_saved(longest(&old.timeouts), fixtures::START as u32);
        assert!(saved.flows.is_empty(), "{:?}", saved.flows);
        assert!(
            matches!(&saved.discarded[..], [line] if line.contains("does not check out")),
            "{:?}",
            saved.discarded
        );
    }

    /// A crash in the middle of a reload of state version 1 leaves, in a
    /// table whose header names the old context, slots the reload rewrote
    /// under the new tables. Carried by their indices from the old context,
    /// those flows would get another service's backend; carried from the
    /// context that names their keys, every flow comes back as it was.
    #[test]
    fn flows_rewritten_by_a_reload_cut_short_come_back_by_their_own_context() {
        let (old, next) = old_and_next();
        let made = two_flows(&mut Balancer::new(
            Arc::clone(&old),
            0,
            1,
            fixtures::NODE_MAC,
        ));
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
