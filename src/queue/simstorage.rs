//! A simulated disk under the queue: an in-memory [`Storage`] whose every
//! decision (which unflushed sectors survive a crash, which flush fails,
//! when the disk is full, how long an operation takes) comes from a seeded
//! PRNG, so a run replays exactly from its seed.
//!
//! Place in the pipeline: the lowest layer of the queue, in place of
//! [`super::storage::DiskStorage`], for the crash-consistency tests
//! (`crash_tests.rs`) and the deterministic simulation (`crate::sim`).
//! Nothing in production uses it.
//!
//! The model (`queue-format/SPEC.md` section 12, "assumptions about the
//! media"): each file keeps its durable bytes (as of its last successful
//! fdatasync) and the bytes written since, sector by sector; reads see the
//! latest bytes (the page cache). The directory keeps its names as they are
//! now and as they were at the last `sync_dir`: a name is durable only once
//! the directory was flushed after it was made. [`SimDisk::crash`] keeps the
//! durable names and bytes and, for every sector written since its file's
//! last flush, keeps it whole, not at all, or torn (a prefix new, the rest
//! old), as the PRNG says; a file's unflushed growth is kept or lost the same
//! way. A failed fdatasync leaves its sectors in that same unknown state
//! (Linux may mark the pages clean after reporting the error) while reads
//! still see the new bytes.
//!
//! Segment writes follow the O_DIRECT rules [`super::storage::DiskStorage`]
//! is bound by: offset and length multiples of 4096, else EINVAL (and the
//! violation is counted, for the tests to assert none happened).
//!
//! Every operation that changes the disk is appended to a journal
//! ([`Op`]) when journaling is on; [`DiskState::apply`] replays one, so a
//! test can rebuild the disk as of any point of a recorded run.
//!
//! Bounds: the disk holds at most `capacity_bytes` (ENOSPC beyond), so a
//! run cannot grow without limit; the journal holds at most
//! `JOURNAL_OPS_MAX` operations.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::storage::{BodyFile, SegmentFile, Storage};

/// The unit a crash keeps or loses (SPEC section 12: a write may be torn
/// at any sector).
pub const SECTOR_BYTES: usize = 512;
/// O_DIRECT alignment of offsets and lengths of segment writes.
pub const DIRECT_ALIGN_BYTES: u64 = 4096;
/// Most operations a journal records.
pub const JOURNAL_OPS_MAX: usize = 1 << 20;

/// splitmix64: small, fast, and the same sequence on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5151_5eed_0000_0001)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound)`; `bound` > 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    /// In `[low, high]`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high);
        low + self.below(high - low + 1)
    }

    /// True with probability `per_million` / 1,000,000.
    pub fn chance(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.below(1_000_000) < per_million as u64
    }
}

/// What the disk does wrong, as probabilities per operation (in millionths)
/// and one-shot faults a test arms.
#[derive(Clone, Debug, Default)]
pub struct FaultRates {
    /// fdatasync (segment or body file) fails with EIO.
    pub sync_error_ppm: u32,
    /// A segment write fails with EIO, writing nothing.
    pub write_error_ppm: u32,
    /// A body write or a create fails with ENOSPC.
    pub no_space_ppm: u32,
    /// Most yields an operation takes (latency that reorders tasks).
    pub latency_yields_max: u32,
}

/// One operation that changed the disk, as the journal records it.
#[derive(Clone, Debug)]
pub enum Op {
    Create {
        name: String,
        inode: u64,
        size_bytes: u64,
    },
    CreateBody {
        name: String,
        inode: u64,
    },
    Write {
        inode: u64,
        offset: u64,
        bytes: std::sync::Arc<[u8]>,
    },
    /// A successful fdatasync.
    Sync {
        inode: u64,
    },
    /// A failed fdatasync: its sectors resolved by this seed.
    SyncFailed {
        inode: u64,
        seed: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Remove {
        name: String,
    },
    SyncDir,
    /// syncfs: every file and the directory durable.
    SyncAll,
}

impl Op {
    /// A write or a flush (what the crash tests crash after).
    pub fn is_write_or_flush(&self) -> bool {
        matches!(self, Op::Write { .. } | Op::Sync { .. } | Op::SyncFailed { .. } | Op::SyncAll)
    }
}

/// One file's bytes: what reads see, what is durable, which sectors differ.
#[derive(Clone, Debug, Default)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Sectors written since the last flush.
    dirty: BTreeSet<u64>,
}

impl FileData {
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset as usize + bytes.len();
        if self.current.len() < end {
            self.current.resize(end, 0);
        }
        self.current[offset as usize..end].copy_from_slice(bytes);
        if !bytes.is_empty() {
            let first = offset / SECTOR_BYTES as u64;
            let last = (end as u64 - 1) / SECTOR_BYTES as u64;
            self.dirty.extend(first..=last);
        }
    }

    fn flush(&mut self) {
        self.durable = self.current.clone();
        self.dirty.clear();
    }

    /// The durable image after the unflushed sectors were kept, lost or
    /// torn, each as `rng` says; the size grows to the new one only if the
    /// growth was kept.
    fn resolve(&mut self, rng: &mut Rng, mode: CrashMode) -> Vec<u8> {
        let mut image = self.durable.clone();
        let grow = match mode {
            CrashMode::Nothing => false,
            CrashMode::Everything => true,
            CrashMode::Random => rng.below(2) == 0,
        };
        if grow && image.len() < self.current.len() {
            image.resize(self.current.len(), 0);
        }
        for &sector in &self.dirty {
            let start = sector as usize * SECTOR_BYTES;
            if start >= image.len() {
                continue;
            }
            let end = (start + SECTOR_BYTES).min(image.len()).min(self.current.len().max(start));
            if end <= start {
                continue;
            }
            let keep = match mode {
                CrashMode::Nothing => 0,
                CrashMode::Everything => end - start,
                CrashMode::Random => match rng.below(4) {
                    0 => 0,
                    1 => rng.range(1, (end - start) as u64 - 1 + u64::from(end - start == 1)) as usize,
                    _ => end - start,
                },
            };
            image[start..start + keep.min(end - start)]
                .copy_from_slice(&self.current[start..start + keep.min(end - start)]);
        }
        image
    }
}

/// How a crash treats unflushed sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Each kept, lost or torn as the PRNG says.
    Random,
    /// None reached the disk.
    Nothing,
    /// All reached the disk.
    Everything,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Segment,
    Body,
}

/// The whole simulated disk. Cloned to rebuild a crash point.
#[derive(Clone, Debug)]
pub struct DiskState {
    files: BTreeMap<u64, (Kind, FileData)>,
    /// The directory as it is now, and as of the last sync_dir.
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    inode_next: u64,
    /// Bumped by every crash: handles opened before it stop working.
    pub generation: u64,
    pub rng: Rng,
    pub rates: FaultRates,
    pub capacity_bytes: u64,
    /// The next fdatasync fails (one shot).
    pub sync_error_next: bool,
    /// fdatasync reports success and flushes nothing: a broken disk, for
    /// tests that show a lost acknowledgement is caught.
    pub sync_lies: bool,
    /// Counters, for assertions and traces.
    pub writes: u64,
    pub syncs: u64,
    pub sync_failures: u64,
    pub alignment_violations: u64,
    pub crashes: u64,
    journal: Option<Vec<Op>>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl DiskState {
    pub fn new(seed: u64, capacity_bytes: u64) -> DiskState {
        DiskState {
            files: BTreeMap::new(),
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            inode_next: 1,
            generation: 0,
            rng: Rng::new(seed),
            rates: FaultRates::default(),
            capacity_bytes,
            sync_error_next: false,
            sync_lies: false,
            writes: 0,
            syncs: 0,
            sync_failures: 0,
            alignment_violations: 0,
            crashes: 0,
            journal: None,
        }
    }

    /// Starts recording operations (see [`DiskState::take_journal`]).
    pub fn record(&mut self) {
        self.journal = Some(Vec::new());
    }

    pub fn take_journal(&mut self) -> Vec<Op> {
        self.journal.take().unwrap_or_default()
    }

    /// Operations recorded so far.
    pub fn journal_len(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.len())
    }

    fn log(&mut self, op: Op) {
        if let Some(journal) = self.journal.as_mut() {
            assert!(journal.len() < JOURNAL_OPS_MAX, "journal above its bound");
            journal.push(op);
        }
    }

    /// Bytes held by every file still reachable or open.
    pub fn used_bytes(&self) -> u64 {
        self.files.values().map(|(_, data)| data.current.len().max(data.durable.len()) as u64).sum()
    }

    /// Names in the directory now.
    pub fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    /// The current bytes of file `name` (tests).
    pub fn bytes_of(&self, name: &str) -> Option<&[u8]> {
        let inode = self.names.get(name)?;
        Some(&self.files[inode].1.current)
    }

    /// Replays one journal operation (no faults, no randomness beyond the
    /// operation's own seed).
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Create { name, inode, size_bytes } => {
                let data = FileData { current: vec![0; *size_bytes as usize], ..FileData::default() };
                self.files.insert(*inode, (Kind::Segment, data));
                self.names.insert(name.clone(), *inode);
                self.inode_next = self.inode_next.max(inode + 1);
            }
            Op::CreateBody { name, inode } => {
                self.files.insert(*inode, (Kind::Body, FileData::default()));
                self.names.insert(name.clone(), *inode);
                self.inode_next = self.inode_next.max(inode + 1);
            }
            Op::Write { inode, offset, bytes } => {
                if let Some((_, data)) = self.files.get_mut(inode) {
                    data.write(*offset, bytes);
                }
            }
            Op::Sync { inode } => {
                if let Some((_, data)) = self.files.get_mut(inode) {
                    data.flush();
                }
            }
            Op::SyncFailed { inode, seed } => self.sync_failed(*inode, *seed),
            Op::Rename { from, to } => {
                if let Some(inode) = self.names.remove(from) {
                    self.names.insert(to.clone(), inode);
                }
            }
            Op::Remove { name } => {
                self.names.remove(name);
            }
            Op::SyncDir => self.durable_names = self.names.clone(),
            Op::SyncAll => {
                for (_, data) in self.files.values_mut() {
                    data.flush();
                }
                self.durable_names = self.names.clone();
            }
        }
        self.collect_unreachable();
    }

    fn sync_failed(&mut self, inode: u64, seed: u64) {
        if let Some((_, data)) = self.files.get_mut(&inode) {
            let mut rng = Rng::new(seed);
            data.durable = data.resolve(&mut rng, CrashMode::Random);
            data.dirty.clear();
        }
    }

    /// Files named nowhere (now or durably) are gone for good.
    fn collect_unreachable(&mut self) {
        let reachable: BTreeSet<u64> = self.names.values().chain(self.durable_names.values()).copied().collect();
        self.files.retain(|inode, _| reachable.contains(inode));
    }

    /// The machine lost power: the directory goes back to its durable
    /// names, every file to its durable bytes plus whatever of its
    /// unflushed sectors `mode` (and the PRNG) keeps.
    pub fn crash(&mut self, mode: CrashMode) {
        self.names = self.durable_names.clone();
        let mut rng = self.rng.clone();
        for (_, data) in self.files.values_mut() {
            let image = data.resolve(&mut rng, mode);
            data.durable = image.clone();
            data.current = image;
            data.dirty.clear();
        }
        self.rng = rng;
        self.collect_unreachable();
        self.generation += 1;
        self.crashes += 1;
    }

    fn inode(&self, name: &str) -> io::Result<u64> {
        self.names.get(name).copied().ok_or_else(|| errno(libc::ENOENT))
    }

    fn create(&mut self, name: &str, kind: Kind, size_bytes: u64) -> io::Result<u64> {
        if self.rng.chance(self.rates.no_space_ppm) {
            return Err(errno(libc::ENOSPC));
        }
        let old = self.names.get(name).map(|inode| self.files[inode].1.current.len() as u64).unwrap_or(0);
        if self.used_bytes().saturating_sub(old) + size_bytes > self.capacity_bytes {
            return Err(errno(libc::ENOSPC));
        }
        let inode = self.inode_next;
        self.inode_next += 1;
        let op = match kind {
            Kind::Segment => Op::Create { name: name.to_string(), inode, size_bytes },
            Kind::Body => Op::CreateBody { name: name.to_string(), inode },
        };
        self.apply(&op);
        self.log(op);
        Ok(inode)
    }

    fn write(&mut self, inode: u64, offset: u64, bytes: &[u8]) -> io::Result<usize> {
        let (kind, len) = match self.files.get(&inode) {
            Some((kind, data)) => (*kind, data.current.len() as u64),
            None => return Err(errno(libc::EBADF)),
        };
        let mut count = bytes.len();
        match kind {
            Kind::Segment => {
                if offset % DIRECT_ALIGN_BYTES != 0 || bytes.len() as u64 % DIRECT_ALIGN_BYTES != 0 {
                    self.alignment_violations += 1;
                    return Err(errno(libc::EINVAL));
                }
                if self.rng.chance(self.rates.write_error_ppm) {
                    return Err(errno(libc::EIO));
                }
            }
            Kind::Body => {
                if self.rng.chance(self.rates.no_space_ppm) {
                    return Err(errno(libc::ENOSPC));
                }
            }
        }
        let growth = (offset + count as u64).saturating_sub(len);
        let room = self.capacity_bytes.saturating_sub(self.used_bytes());
        if growth > room {
            if kind == Kind::Segment {
                return Err(errno(libc::ENOSPC));
            }
            count = (count as u64 - (growth - room)) as usize;
            if count == 0 {
                return Err(errno(libc::ENOSPC));
            }
        }
        let op = Op::Write { inode, offset, bytes: std::sync::Arc::from(&bytes[..count]) };
        self.apply(&op);
        self.log(op);
        self.writes += 1;
        Ok(count)
    }

    fn sync(&mut self, inode: u64) -> io::Result<()> {
        if !self.files.contains_key(&inode) {
            return Err(errno(libc::EBADF));
        }
        self.syncs += 1;
        if std::mem::take(&mut self.sync_error_next) || self.rng.chance(self.rates.sync_error_ppm) {
            let op = Op::SyncFailed { inode, seed: self.rng.next_u64() };
            self.apply(&op);
            self.log(op);
            self.sync_failures += 1;
            return Err(errno(libc::EIO));
        }
        if self.sync_lies {
            return Ok(());
        }
        let op = Op::Sync { inode };
        self.apply(&op);
        self.log(op);
        Ok(())
    }

    fn read(&self, inode: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let (_, data) = self.files.get(&inode).ok_or_else(|| errno(libc::EBADF))?;
        let start = (offset as usize).min(data.current.len());
        let end = start.saturating_add(len).min(data.current.len());
        Ok(data.current[start..end].to_vec())
    }

    fn size(&self, inode: u64) -> io::Result<u64> {
        Ok(self.files.get(&inode).ok_or_else(|| errno(libc::EBADF))?.1.current.len() as u64)
    }

    fn change_dir(&mut self, op: Op) {
        self.apply(&op);
        self.log(op);
    }
}

/// A handle on the shared simulated disk; what a crashed shard held stops
/// working when the disk's generation moves on.
#[derive(Clone)]
pub struct SimDisk {
    pub state: Rc<RefCell<DiskState>>,
}

impl SimDisk {
    pub fn new(seed: u64, capacity_bytes: u64) -> SimDisk {
        SimDisk::from_state(DiskState::new(seed, capacity_bytes))
    }

    pub fn from_state(state: DiskState) -> SimDisk {
        SimDisk { state: Rc::new(RefCell::new(state)) }
    }

    /// A [`Storage`] for one life of a shard (until the next crash).
    pub fn storage(&self) -> SimStorage {
        let generation = self.state.borrow().generation;
        SimStorage { disk: self.clone(), generation, path: PathBuf::from("/sim/spool") }
    }

    pub fn crash(&self, mode: CrashMode) {
        self.state.borrow_mut().crash(mode);
    }
}

/// The simulated disk as one shard's spool directory.
pub struct SimStorage {
    disk: SimDisk,
    generation: u64,
    path: PathBuf,
}

/// Simulated latency: a few yields, as the PRNG says. Yielding (never a
/// timer) keeps a run independent of the machine's speed.
async fn latency(disk: &SimDisk) {
    let yields = {
        let mut state = disk.state.borrow_mut();
        let max = state.rates.latency_yields_max;
        if max == 0 {
            0
        } else {
            state.rng.range(0, max as u64)
        }
    };
    for _ in 0..yields {
        futures_lite::future::yield_now().await;
    }
}

/// A stale handle (from before a crash) or an operation on the disk.
fn live(disk: &SimDisk, generation: u64) -> io::Result<std::cell::RefMut<'_, DiskState>> {
    let state = disk.state.borrow_mut();
    if state.generation != generation {
        return Err(errno(libc::EIO));
    }
    Ok(state)
}

pub struct SimFile {
    disk: SimDisk,
    generation: u64,
    inode: u64,
}

pub struct SimBody {
    file: SimFile,
}

impl SimStorage {
    async fn open_file(&self, name: &str) -> io::Result<SimFile> {
        latency(&self.disk).await;
        let inode = live(&self.disk, self.generation)?.inode(name)?;
        Ok(SimFile { disk: self.disk.clone(), generation: self.generation, inode })
    }
}

impl Storage for SimStorage {
    type File = SimFile;
    type Body = SimBody;

    async fn create(&self, name: &str, size_bytes: u64) -> io::Result<SimFile> {
        latency(&self.disk).await;
        let inode = live(&self.disk, self.generation)?.create(name, Kind::Segment, size_bytes)?;
        Ok(SimFile { disk: self.disk.clone(), generation: self.generation, inode })
    }

    async fn open(&self, name: &str) -> io::Result<SimFile> {
        self.open_file(name).await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        latency(&self.disk).await;
        let mut state = live(&self.disk, self.generation)?;
        state.inode(from)?;
        state.change_dir(Op::Rename { from: from.to_string(), to: to.to_string() });
        Ok(())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        latency(&self.disk).await;
        let mut state = live(&self.disk, self.generation)?;
        state.inode(name)?;
        state.change_dir(Op::Remove { name: name.to_string() });
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        latency(&self.disk).await;
        live(&self.disk, self.generation)?.change_dir(Op::SyncDir);
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(live(&self.disk, self.generation)?.names())
    }

    fn path(&self) -> &Path {
        &self.path
    }

    async fn create_body(&self, name: &str) -> io::Result<SimBody> {
        latency(&self.disk).await;
        let inode = live(&self.disk, self.generation)?.create(name, Kind::Body, 0)?;
        Ok(SimBody { file: SimFile { disk: self.disk.clone(), generation: self.generation, inode } })
    }

    async fn open_body(&self, name: &str) -> io::Result<SimBody> {
        Ok(SimBody { file: self.open_file(name).await? })
    }

    async fn sync_filesystem(&self) -> io::Result<()> {
        latency(&self.disk).await;
        let mut state = live(&self.disk, self.generation)?;
        state.syncs += 1;
        if std::mem::take(&mut state.sync_error_next) || {
            let ppm = state.rates.sync_error_ppm;
            state.rng.chance(ppm)
        } {
            state.sync_failures += 1;
            return Err(errno(libc::EIO));
        }
        state.change_dir(Op::SyncAll);
        Ok(())
    }
}

impl SimFile {
    async fn write_bytes(&self, bytes: &[u8], offset: u64) -> io::Result<usize> {
        latency(&self.disk).await;
        live(&self.disk, self.generation)?.write(self.inode, offset, bytes)
    }

    async fn sync_file(&self) -> io::Result<()> {
        latency(&self.disk).await;
        live(&self.disk, self.generation)?.sync(self.inode)
    }

    async fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        latency(&self.disk).await;
        live(&self.disk, self.generation)?.read(self.inode, offset, len)
    }
}

impl SegmentFile for SimFile {
    async fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<usize> {
        self.write_bytes(bytes, offset).await
    }

    async fn sync(&self) -> io::Result<()> {
        self.sync_file().await
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.read(offset, len).await
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        live(&self.disk, self.generation)?.size(self.inode)
    }
}

impl BodyFile for SimBody {
    async fn write_at(&self, bytes: Vec<u8>, offset: u64) -> io::Result<usize> {
        self.file.write_bytes(&bytes, offset).await
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.sync_file().await
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.file.read(offset, len).await
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        live(&self.file.disk, self.file.generation)?.size(self.file.inode)
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

/// Counts of what a crash kept, for tests of the disk itself.
#[cfg(test)]
mod tests {
    use super::*;

    fn block(fill: u8) -> Vec<u8> {
        vec![fill; 4096]
    }

    #[test]
    fn flushed_bytes_survive_a_crash_and_unflushed_names_do_not() {
        let mut state = DiskState::new(1, 1 << 20);
        let a = state.create("a", Kind::Segment, 8192).unwrap();
        state.change_dir(Op::SyncDir);
        state.write(a, 0, &block(1)).unwrap();
        state.sync(a).unwrap();
        state.write(a, 4096, &block(2)).unwrap();
        let b = state.create("b", Kind::Body, 0).unwrap();
        state.write(b, 0, b"never flushed, never named durably").unwrap();
        state.crash(CrashMode::Nothing);
        assert_eq!(state.names(), vec!["a".to_string()], "b's name was never flushed");
        let bytes = state.bytes_of("a").unwrap();
        assert!(bytes[..4096] == block(1)[..], "the flushed block is there");
        assert!(bytes[4096..] == vec![0u8; 4096][..], "the unflushed block was lost");
    }

    #[test]
    fn everything_mode_keeps_unflushed_sectors_and_random_mode_tears_some() {
        let mut kept = DiskState::new(2, 1 << 20);
        let a = kept.create("a", Kind::Segment, 8192).unwrap();
        kept.change_dir(Op::SyncDir);
        kept.sync(a).unwrap();
        kept.write(a, 0, &vec![7u8; 8192]).unwrap();
        let mut random = kept.clone();
        kept.crash(CrashMode::Everything);
        assert!(kept.bytes_of("a").unwrap() == &vec![7u8; 8192][..], "every unflushed sector kept");
        let mut mixed = false;
        for seed in 0..20 {
            let mut state = random.clone();
            state.rng = Rng::new(seed);
            state.crash(CrashMode::Random);
            let bytes = state.bytes_of("a").unwrap();
            let sevens = bytes.iter().filter(|&&b| b == 7).count();
            mixed |= sevens > 0 && sevens < 8192 && sevens % SECTOR_BYTES != 0;
        }
        assert!(mixed, "some crash tore a sector");
        random.crash(CrashMode::Nothing);
        assert!(random.bytes_of("a").unwrap() == &vec![0u8; 8192][..], "every unflushed sector lost");
    }

    #[test]
    fn misaligned_segment_writes_are_einval_and_counted() {
        let mut state = DiskState::new(3, 1 << 20);
        let a = state.create("a", Kind::Segment, 8192).unwrap();
        let e = state.write(a, 100, &block(1)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let e = state.write(a, 0, &[1u8; 100]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert_eq!(state.alignment_violations, 2);
    }

    #[test]
    fn a_full_disk_is_enospc_and_a_body_write_is_cut_short() {
        let mut state = DiskState::new(4, 10_000);
        assert_eq!(state.create("s", Kind::Segment, 16384).unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        let b = state.create("b", Kind::Body, 0).unwrap();
        assert_eq!(state.write(b, 0, &[1u8; 12_000]).unwrap(), 10_000, "short write at the end of the room");
        assert_eq!(state.write(b, 10_000, &[1u8; 10]).unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn a_failed_flush_leaves_reads_new_and_the_durable_image_unknown() {
        let mut state = DiskState::new(5, 1 << 20);
        let a = state.create("a", Kind::Segment, 4096).unwrap();
        state.change_dir(Op::SyncDir);
        state.record();
        state.write(a, 0, &block(9)).unwrap();
        state.sync_error_next = true;
        assert!(state.sync(a).is_err());
        assert!(state.bytes_of("a").unwrap() == &block(9)[..], "the page cache still has the new bytes");
        let journal = state.take_journal();
        assert!(matches!(journal.last(), Some(Op::SyncFailed { .. })));
        // Replaying the journal onto the state before it gives the same disk.
        let mut replayed = DiskState::new(5, 1 << 20);
        replayed.create("a", Kind::Segment, 4096).unwrap();
        replayed.change_dir(Op::SyncDir);
        for op in &journal {
            replayed.apply(op);
        }
        let mut original = state.clone();
        original.crash(CrashMode::Nothing);
        replayed.crash(CrashMode::Nothing);
        assert!(original.bytes_of("a") == replayed.bytes_of("a"), "the replay gives the same disk");
    }

    #[test]
    fn a_handle_from_before_a_crash_stops_working() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let disk = SimDisk::new(6, 1 << 20);
                let storage = disk.storage();
                let file = storage.create("a", 8192).await.unwrap();
                disk.crash(CrashMode::Everything);
                assert!(file.write_at(&block(1), 0).await.is_err());
                assert!(storage.list().is_err());
                assert!(disk.storage().list().unwrap().is_empty(), "a's name was never flushed");
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
