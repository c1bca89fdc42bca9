//! The three queue layouts `seekbench` compares, driven through io_uring.
//!
//! Each case runs `concurrency` writers in a closed loop (a writer submits
//! its next message as soon as the previous one is durable) until `count`
//! messages are durable or the case's time limit passes. All I/O goes
//! through one io_uring per case, so the kernel sees the same concurrency
//! an event-driven MTA would give it:
//!
//! - `log`: records are appended into one preallocated (fallocate) segment
//!   opened with O_DIRECT. Whatever records are waiting form one batch,
//!   padded to 4 KiB, written with one write and made durable with one
//!   fdatasync (linked SQEs): group commit.
//! - `file-per-message`: as Postfix and qmail do it: openat(O_CREAT|O_EXCL),
//!   write, fsync, close, renameat to the final name; after that the file
//!   is unlinked, as delivery would, without the writer waiting for it.
//! - `append-fsync`: one buffered append-only file, each message written at
//!   the next offset and followed by its own fdatasync.

use hdrhistogram::Histogram;
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Alignment and padding unit of O_DIRECT log writes.
pub const BLOCK_BYTES: usize = 4096;
/// Most writers a case may have (bounds the ring and the writer table).
pub const CONCURRENCY_MAX: usize = 4096;
/// Bytes of the record header in the log layout (length, sequence, writer).
pub const LOG_RECORD_HEADER_BYTES: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Log,
    /// The log layout in a segment written once before the run, as a
    /// recycled segment would be (not in the default set).
    LogRecycled,
    FilePerMessage,
    AppendFsync,
}

impl Layout {
    pub const ALL: [Layout; 3] = [Layout::Log, Layout::FilePerMessage, Layout::AppendFsync];

    pub fn name(self) -> &'static str {
        match self {
            Layout::Log => "log",
            Layout::LogRecycled => "log-recycled",
            Layout::FilePerMessage => "file-per-message",
            Layout::AppendFsync => "append-fsync",
        }
    }

    pub fn parse(s: &str) -> Result<Layout, String> {
        match s {
            "log" => Ok(Layout::Log),
            "log-recycled" => Ok(Layout::LogRecycled),
            "file" | "file-per-message" => Ok(Layout::FilePerMessage),
            "append" | "append-fsync" => Ok(Layout::AppendFsync),
            _ => Err(format!(
                "unknown layout {s:?} (log, log-recycled, file-per-message, append-fsync)"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CaseConfig {
    /// Directory the case's files are created in (must exist).
    pub dir: PathBuf,
    pub count: u64,
    pub message_bytes: usize,
    pub concurrency: usize,
    pub time_max: Duration,
    /// Largest log batch; more waiting records wait for the next batch.
    pub batch_bytes_max: usize,
}

/// What one case did, before device counters are added.
pub struct CaseOutcome {
    pub messages: u64,
    /// fsync/fdatasync calls issued.
    pub flush_calls: u64,
    /// Bytes passed to write, padding included.
    pub app_bytes: u64,
    pub elapsed: Duration,
    /// Time from a message being ready to it being durable.
    pub latency_us: Histogram<u64>,
    /// False when the filesystem refused O_DIRECT and the log fell back.
    pub direct_io: bool,
}

impl CaseOutcome {
    fn new() -> CaseOutcome {
        CaseOutcome {
            messages: 0,
            flush_calls: 0,
            app_bytes: 0,
            elapsed: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            direct_io: true,
        }
    }

    fn durable(&mut self, ready_at: Instant, now: Instant) {
        self.messages += 1;
        let us = (now - ready_at).as_micros() as u64;
        self.latency_us.record(us.clamp(1, 600_000_000)).expect("clamped");
    }
}

pub fn run_case(layout: Layout, cfg: &CaseConfig) -> io::Result<CaseOutcome> {
    assert!(cfg.concurrency >= 1 && cfg.concurrency <= CONCURRENCY_MAX);
    assert!(cfg.message_bytes >= LOG_RECORD_HEADER_BYTES);
    let entries = (cfg.concurrency * 4 + 16).next_power_of_two() as u32;
    let mut ring = IoUring::new(entries)?;
    let out = match layout {
        Layout::Log => run_log(&mut ring, cfg, false)?,
        Layout::LogRecycled => run_log(&mut ring, cfg, true)?,
        Layout::FilePerMessage => run_file_per_message(&mut ring, cfg, Instant::now())?,
        Layout::AppendFsync => run_append(&mut ring, cfg, Instant::now())?,
    };
    Ok(out)
}

/// A zeroed heap buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout =
            std::alloc::Layout::from_size_align(len.max(BLOCK_BYTES), BLOCK_BYTES).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation of {len} bytes failed");
        AlignedBuf { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to layout.size() initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn round_up(n: usize, unit: usize) -> usize {
    n.div_ceil(unit) * unit
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains NUL"))
}

fn open_file(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: c is a valid NUL-terminated path; the fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pushes SQEs that must stay together (a linked chain), submitting first
/// if the submission queue lacks room for all of them.
fn push_all(ring: &mut IoUring, entries: &[squeue::Entry]) -> io::Result<()> {
    let free = {
        let sq = ring.submission();
        sq.capacity() - sq.len()
    };
    if free < entries.len() {
        ring.submit()?;
    }
    for e in entries {
        // SAFETY: every buffer and path an entry points to outlives its
        // completion (owned by the case until the ring is drained).
        unsafe { ring.submission().push(e) }.map_err(|_| io::Error::other("submission queue full"))?;
    }
    Ok(())
}

/// Submits and waits for at least one completion; returns (user_data, result).
fn reap(ring: &mut IoUring, cqes: &mut Vec<(u64, i32)>) -> io::Result<()> {
    ring.submit_and_wait(1)?;
    cqes.clear();
    cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
    Ok(())
}

fn check(res: i32, what: &str) -> io::Result<i32> {
    if res < 0 {
        let e = io::Error::from_raw_os_error(-res);
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(res)
}

fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz\n"[i % 37])
        .collect()
}

// ---- (a) log-structured with group commit ----

fn run_log(ring: &mut IoUring, cfg: &CaseConfig, recycled: bool) -> io::Result<CaseOutcome> {
    let mut out = CaseOutcome::new();
    let record_bytes = cfg.message_bytes;
    let batch_records_max = (cfg.batch_bytes_max / record_bytes).max(1);
    let path = cfg.dir.join("log.seg");
    let flags = libc::O_CREAT | libc::O_RDWR | libc::O_TRUNC;
    let file = match open_file(&path, flags | libc::O_DIRECT) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            out.direct_io = false;
            open_file(&path, flags)?
        }
        Err(e) => return Err(e),
    };
    // Worst case every batch holds one record and is padded to a block.
    let segment_bytes = cfg.count as usize * round_up(record_bytes, BLOCK_BYTES);
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, segment_bytes as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if recycled {
        overwrite_zeros(&file, segment_bytes)?;
    }
    // The allocation must be durable before the run, as a recycled or
    // preallocated segment would be.
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::fsync(file.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let start = Instant::now();
    let mut buf = AlignedBuf::new(round_up(batch_records_max * record_bytes, BLOCK_BYTES));
    let body = payload(record_bytes - LOG_RECORD_HEADER_BYTES);
    let mut ready: Vec<(usize, Instant)> = (0..cfg.concurrency).map(|w| (w, start)).collect();
    let mut batch: Vec<(usize, Instant)> = Vec::with_capacity(batch_records_max);
    let mut offset: u64 = 0;
    let mut sequence: u64 = 0;
    let mut cqes = Vec::new();
    while out.messages < cfg.count && start.elapsed() < cfg.time_max {
        let take = ready
            .len()
            .min(batch_records_max)
            .min((cfg.count - out.messages) as usize);
        batch.clear();
        batch.extend(ready.drain(..take));
        let bytes = buf.as_mut_slice();
        for (i, &(writer, _)) in batch.iter().enumerate() {
            let rec = &mut bytes[i * record_bytes..(i + 1) * record_bytes];
            rec[0..4].copy_from_slice(&(record_bytes as u32).to_le_bytes());
            rec[4..12].copy_from_slice(&sequence.to_le_bytes());
            rec[12..16].copy_from_slice(&(writer as u32).to_le_bytes());
            rec[16..].copy_from_slice(&body);
            sequence += 1;
        }
        let used = take * record_bytes;
        let len = round_up(used, BLOCK_BYTES);
        bytes[used..len].fill(0);
        let fd = types::Fd(file.as_raw_fd());
        let write = opcode::Write::new(fd, buf.ptr, len as u32)
            .offset(offset)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(1);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(2);
        push_all(ring, &[write, sync])?;
        let mut pending = 2;
        while pending > 0 {
            reap(ring, &mut cqes)?;
            for &(ud, res) in &cqes {
                let n = check(res, if ud == 1 { "log write" } else { "log fdatasync" })?;
                assert!(ud != 1 || n as usize == len, "short O_DIRECT write");
                pending -= 1;
            }
        }
        offset += len as u64;
        assert!(
            offset as usize <= segment_bytes,
            "segment preallocated for the worst case"
        );
        out.flush_calls += 1;
        out.app_bytes += len as u64;
        let now = Instant::now();
        for &(writer, ready_at) in &batch {
            out.durable(ready_at, now);
            ready.push((writer, now));
        }
    }
    out.elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(out)
}

/// Writes zeros over the segment, so its extents are written, not just
/// allocated: the state of a segment reused after garbage collection.
fn overwrite_zeros(file: &OwnedFd, segment_bytes: usize) -> io::Result<()> {
    let mut zeros = AlignedBuf::new(1 << 20);
    let chunk = zeros.as_mut_slice();
    let mut offset = 0;
    while offset < segment_bytes {
        let len = chunk.len().min(segment_bytes - offset);
        // SAFETY: chunk is valid for len bytes; fd is owned.
        let n = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                chunk.as_ptr().cast(),
                len,
                offset as libc::off_t,
            )
        };
        if n <= 0 {
            return Err(io::Error::last_os_error());
        }
        offset += n as usize;
    }
    Ok(())
}

// ---- (b) one file per message ----

const OP_OPEN: u64 = 0;
const OP_WRITE: u64 = 1;
const OP_FSYNC: u64 = 2;
const OP_CLOSE: u64 = 3;
const OP_RENAME: u64 = 4;
const OP_UNLINK: u64 = 5;

fn user_data(writer: usize, op: u64) -> u64 {
    ((writer as u64) << 8) | op
}

struct FileWriter {
    ready_at: Instant,
    fd: i32,
    tmp: CString,
    fin: CString,
    links_pending: u32,
}

fn run_file_per_message(ring: &mut IoUring, cfg: &CaseConfig, start: Instant) -> io::Result<CaseOutcome> {
    let mut out = CaseOutcome::new();
    let dir = cfg.dir.join("incoming");
    std::fs::create_dir_all(&dir)?;
    let dir_file = open_file(&dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let dirfd = types::Fd(dir_file.as_raw_fd());
    let body = payload(cfg.message_bytes);
    let mut next_message: u64 = 0;
    let mut writers: Vec<Option<FileWriter>> = (0..cfg.concurrency).map(|_| None).collect();
    // Unlinks in flight, by token; the path must live until completion.
    let mut unlinks: HashMap<u64, CString> = HashMap::new();
    let mut unlink_token: u64 = 0;
    let mut in_flight = 0usize;
    let mut cqes = Vec::new();

    let start_message = |w: usize,
                         writers: &mut Vec<Option<FileWriter>>,
                         ring: &mut IoUring,
                         next: &mut u64|
     -> io::Result<bool> {
        if *next >= cfg.count || start.elapsed() >= cfg.time_max {
            writers[w] = None;
            return Ok(false);
        }
        let n = *next;
        *next += 1;
        let fw = FileWriter {
            ready_at: Instant::now(),
            fd: -1,
            tmp: CString::new(format!("tmp.{w}.{n}")).expect("no NUL"),
            fin: CString::new(format!("q.{n}")).expect("no NUL"),
            links_pending: 0,
        };
        let open = opcode::OpenAt::new(dirfd, fw.tmp.as_ptr())
            .flags(libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC)
            .mode(0o600)
            .build()
            .user_data(user_data(w, OP_OPEN));
        writers[w] = Some(fw);
        push_all(ring, &[open])?;
        Ok(true)
    };

    for w in 0..cfg.concurrency {
        if start_message(w, &mut writers, ring, &mut next_message)? {
            in_flight += 1;
        }
    }
    while in_flight > 0 || !unlinks.is_empty() {
        reap(ring, &mut cqes)?;
        for &(ud, res) in &cqes.clone() {
            let (w, op) = ((ud >> 8) as usize, ud & 0xFF);
            if op == OP_UNLINK {
                check(res, "unlinkat")?;
                unlinks.remove(&(ud >> 8));
                continue;
            }
            let fw = writers[w].as_mut().expect("completion for an active writer");
            match op {
                OP_OPEN => {
                    fw.fd = check(res, "openat")?;
                    let fd = types::Fd(fw.fd);
                    let chain = [
                        opcode::Write::new(fd, body.as_ptr(), body.len() as u32)
                            .build()
                            .flags(squeue::Flags::IO_LINK)
                            .user_data(user_data(w, OP_WRITE)),
                        opcode::Fsync::new(fd)
                            .build()
                            .flags(squeue::Flags::IO_LINK)
                            .user_data(user_data(w, OP_FSYNC)),
                        opcode::Close::new(fd).build().user_data(user_data(w, OP_CLOSE)),
                    ];
                    fw.links_pending = 3;
                    out.flush_calls += 1;
                    out.app_bytes += body.len() as u64;
                    push_all(ring, &chain)?;
                }
                OP_WRITE | OP_FSYNC | OP_CLOSE => {
                    check(res, ["", "write", "fsync", "close"][op as usize])?;
                    fw.links_pending -= 1;
                    if fw.links_pending == 0 {
                        let rename = opcode::RenameAt::new(dirfd, fw.tmp.as_ptr(), dirfd, fw.fin.as_ptr())
                            .build()
                            .user_data(user_data(w, OP_RENAME));
                        push_all(ring, &[rename])?;
                    }
                }
                OP_RENAME => {
                    check(res, "renameat")?;
                    out.durable(fw.ready_at, Instant::now());
                    let fin = std::mem::take(&mut fw.fin);
                    unlink_token += 1;
                    let unlink = opcode::UnlinkAt::new(dirfd, fin.as_ptr())
                        .build()
                        .user_data((unlink_token << 8) | OP_UNLINK);
                    unlinks.insert(unlink_token, fin);
                    push_all(ring, &[unlink])?;
                    if !start_message(w, &mut writers, ring, &mut next_message)? {
                        in_flight -= 1;
                    }
                }
                _ => unreachable!("unknown op {op}"),
            }
        }
    }
    out.elapsed = start.elapsed();
    drop(dir_file);
    std::fs::remove_dir(&dir)?;
    Ok(out)
}

// ---- (c) one append-only file, fdatasync per message ----

fn run_append(ring: &mut IoUring, cfg: &CaseConfig, start: Instant) -> io::Result<CaseOutcome> {
    let mut out = CaseOutcome::new();
    let path = cfg.dir.join("append.log");
    let file = open_file(&path, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC)?;
    let fd = types::Fd(file.as_raw_fd());
    let body = payload(cfg.message_bytes);
    let mut next_message: u64 = 0;
    let mut ready_at: Vec<Instant> = vec![start; cfg.concurrency];
    let mut in_flight = 0usize;
    let mut cqes = Vec::new();

    let mut submit = |w: usize, ring: &mut IoUring, out: &mut CaseOutcome| -> io::Result<bool> {
        if next_message >= cfg.count || start.elapsed() >= cfg.time_max {
            return Ok(false);
        }
        let offset = next_message * body.len() as u64;
        next_message += 1;
        let chain = [
            opcode::Write::new(fd, body.as_ptr(), body.len() as u32)
                .offset(offset)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(user_data(w, OP_WRITE)),
            opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(user_data(w, OP_FSYNC)),
        ];
        out.flush_calls += 1;
        out.app_bytes += body.len() as u64;
        push_all(ring, &chain)?;
        Ok(true)
    };

    for w in 0..cfg.concurrency {
        if submit(w, ring, &mut out)? {
            in_flight += 1;
        }
    }
    while in_flight > 0 {
        reap(ring, &mut cqes)?;
        for &(ud, res) in &cqes.clone() {
            let (w, op) = ((ud >> 8) as usize, ud & 0xFF);
            check(res, if op == OP_WRITE { "write" } else { "fdatasync" })?;
            if op == OP_FSYNC {
                let now = Instant::now();
                out.durable(ready_at[w], now);
                ready_at[w] = now;
                if !submit(w, ring, &mut out)? {
                    in_flight -= 1;
                }
            }
        }
    }
    out.elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_runs_small() {
        let dir = std::env::temp_dir().join(format!("seek-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for layout in Layout::ALL.into_iter().chain([Layout::LogRecycled]) {
            for concurrency in [1, 3] {
                let cfg = CaseConfig {
                    dir: dir.clone(),
                    count: 10,
                    message_bytes: 1024,
                    concurrency,
                    time_max: Duration::from_secs(30),
                    batch_bytes_max: 1 << 20,
                };
                let out = run_case(layout, &cfg).unwrap();
                assert_eq!(out.messages, 10, "{layout:?}");
                assert_eq!(out.latency_us.len(), 10);
                match layout {
                    Layout::Log | Layout::LogRecycled => {
                        assert!(out.flush_calls <= 10 && out.app_bytes.is_multiple_of(4096))
                    }
                    _ => assert_eq!(out.flush_calls, 10),
                }
            }
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "files left behind");
        std::fs::remove_dir(&dir).unwrap();
    }
}
