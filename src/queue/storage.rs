//! Storage under the queue: a directory of segment files written with
//! O_DIRECT at block-aligned offsets and flushed with fdatasync, and of body
//! files written front to back while a message is received.
//!
//! Place in the pipeline: the lowest layer of the queue. The log committer
//! (`log.rs`), recovery (`recover.rs`), the runners (`runner.rs`) and the
//! message writer and body check (`mod.rs`) reach the disk only through
//! [`Storage`], [`SegmentFile`] and [`BodyFile`], so the tests can put
//! [`FaultStorage`] underneath and make writes torn or short, flushes fail,
//! or the disk full, at the moment they choose, on either kind of file.
//!
//! [`DiskStorage`] is the real one: glommio files on io_uring (DMA files for
//! segments, buffered files for bodies). A segment is created at its full
//! size with fallocate so that an fdatasync inside it flushes data, not
//! file-size metadata, and zeroed a few MiB ahead of its records
//! ([`SegmentFile::initialize`]) so that the blocks a batch lands in are no
//! longer unwritten extents, whose conversion each flush would carry; the
//! directory is flushed after every create,
//! rename and remove so the name is as durable as the bytes.
//!
//! Errors keep their errno: glommio's own conversion of its file errors to
//! `io::Error` keeps the kind and the text but drops the errno, so
//! [`io_error`] converts instead, keeping the original error as the source,
//! and [`errno_of`] finds it again through any wrapping.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use glommio::GlommioError;

/// A directory of segment files and body files.
#[allow(async_fn_in_trait)]
pub trait Storage {
    type File: SegmentFile;
    type Body: BodyFile;
    /// Creates (or truncates) `name`, allocated to `size_bytes`.
    async fn create(&self, name: &str, size_bytes: u64) -> io::Result<Self::File>;
    /// Opens an existing file for reading and writing.
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Flushes the directory itself (names created, renamed, removed).
    async fn sync_dir(&self) -> io::Result<()>;
    /// Every file name in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    fn path(&self) -> &Path;
    /// Creates body file `name`, empty (truncated if it exists), for
    /// writing and reading. Removed with [`Storage::remove`].
    async fn create_body(&self, name: &str) -> io::Result<Self::Body>;
    /// Opens an existing body file for reading.
    async fn open_body(&self, name: &str) -> io::Result<Self::Body>;
    /// syncfs(2): every file of the directory's file system durable, body
    /// files included (`queue.body_sync = "syncfs"`).
    async fn sync_filesystem(&self) -> io::Result<()>;
}

/// One body file: written front to back while its message is received,
/// flushed once before its envelope is staged (writer rule 4), read at
/// delivery.
#[allow(async_fn_in_trait)]
pub trait BodyFile {
    /// Writes `bytes` at `offset`; returns how many bytes were written.
    /// Fewer than given means the file system ran out of room part-way.
    async fn write_at(&self, bytes: Vec<u8>, offset: u64) -> io::Result<usize>;
    /// fdatasync.
    async fn sync(&self) -> io::Result<()>;
    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    async fn size_bytes(&self) -> io::Result<u64>;
    async fn close(self) -> io::Result<()>;
}

/// One segment file. Writes are whole 4 KiB blocks at block offsets.
#[allow(async_fn_in_trait)]
pub trait SegmentFile {
    /// Writes `bytes` at `offset`; returns how many bytes were written.
    async fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<usize>;
    /// fdatasync.
    async fn sync(&self) -> io::Result<()>;
    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    async fn size_bytes(&self) -> io::Result<u64>;
    /// Writes zeros over `[offset, offset + len)`, a block-aligned range
    /// past every record of the segment, so that the file system holds
    /// those blocks as written: a later batch there is flushed by an
    /// fdatasync of data alone, with no extent conversion (a metadata write
    /// and, on a journalling file system, a journal commit) riding along.
    /// Storage without that distinction has nothing to do.
    async fn initialize(&self, offset: u64, len: usize) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Reads the file's first `len` bytes (fewer at its end) and returns
    /// what `work` makes of them, handing `work` the bytes as they arrive.
    /// On the disk storage `work` runs on a helper thread while a second
    /// thread reads the file in chunks ahead of it, and the bytes never
    /// reach the executor: recovery decodes several segments at once that
    /// way, each following its read. Elsewhere the bytes arrive whole.
    async fn read_with<R, F>(&self, len: usize, work: F) -> io::Result<R>
    where
        F: FnOnce(&Arriving<'_>) -> R + Send + 'static,
        R: Send + 'static,
    {
        let bytes = self.read_at(0, len).await?;
        Ok(work(&Arriving::whole(&bytes)))
    }
}

/// A file's first bytes as a read brings them in: a prefix that only
/// grows, until the read has ended. Handed out by [`SegmentFile::read_with`]
/// so that a decoder can start on a segment's first records while the rest
/// is still being read (the read of a 64 MiB segment is as long as its
/// decode).
pub struct Arriving<'a>(Source<'a>);

enum Source<'a> {
    /// Every byte is in.
    Whole(&'a [u8]),
    /// A chunked read still going on into the buffer at `base`. Bytes
    /// `[0, in_bytes)` are written once and never again (the reader writes
    /// only past `in_bytes`), so handing out shared slices of that prefix
    /// is sound while the read goes on.
    Reading { base: *const u8, progress: &'a ReadProgress },
}

/// How far a chunked read has come, published by the reading thread after
/// each chunk (the mutex orders the chunk's bytes before the count).
#[derive(Default)]
struct ReadProgress {
    state: std::sync::Mutex<ReadState>,
    arrived: std::sync::Condvar,
}

#[derive(Default, Clone, Copy)]
struct ReadState {
    in_bytes: usize,
    /// No more bytes will come: the read reached its length, the file's
    /// end, or an error (which the read's result reports).
    ended: bool,
}

impl ReadProgress {
    fn publish(&self, in_bytes: usize, ended: bool) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        debug_assert!(in_bytes >= state.in_bytes, "invariant: a read's prefix only grows");
        *state = ReadState { in_bytes, ended };
        self.arrived.notify_all();
    }

    /// No more bytes will come than those published.
    fn end(&self) {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).ended = true;
        self.arrived.notify_all();
    }
}

impl<'a> Arriving<'a> {
    /// Bytes that are all in already.
    pub fn whole(bytes: &'a [u8]) -> Arriving<'a> {
        Arriving(Source::Whole(bytes))
    }

    /// Waits until at least `at_least` bytes are in or the read has ended;
    /// returns the bytes in so far and whether they are all that will come.
    pub fn wait(&self, at_least: usize) -> (&'a [u8], bool) {
        let (base, progress) = match self.0 {
            Source::Whole(bytes) => return (bytes, true),
            Source::Reading { base, progress } => (base, progress),
        };
        let mut state = progress.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while !state.ended && state.in_bytes < at_least {
            state = progress.arrived.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let ReadState { in_bytes, ended } = *state;
        drop(state);
        // SAFETY: the first `in_bytes` bytes of the buffer (alive for 'a)
        // were written before they were published and are not written again.
        (unsafe { std::slice::from_raw_parts(base, in_bytes) }, ended)
    }
}

/// Largest write of zeros ahead of a segment's records (and so the memory
/// one costs).
const INITIALIZE_WRITE_BYTES: usize = 256 << 10;

/// Alignment of a direct read's offset, length and buffer: the largest
/// logical block size a spool's device is expected to have.
const DIRECT_READ_ALIGN_BYTES: usize = 4096;

/// Bytes a segment's chunked read asks for at a time: each chunk is handed
/// to the decoder as soon as it is in, and each is still large enough for
/// the device to get many requests at once.
const READ_CHUNK_BYTES: usize = 4 << 20;

/// Reads `path`'s first `len` bytes with O_DIRECT (the device writes into
/// the buffer: no page-cache copy, and a scan does not evict the page
/// cache), or through the page cache where the file system refuses direct
/// I/O (tmpfs), and returns what `work` makes of them. Runs on a helper
/// thread; a second thread reads the file in chunks of `chunk_bytes`
/// (rounded up to the alignment) while `work` follows the bytes in (see
/// [`Arriving`]).
pub(crate) fn read_arriving<R>(
    path: &Path,
    len: usize,
    chunk_bytes: usize,
    work: impl FnOnce(&Arriving<'_>) -> R,
) -> io::Result<R> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path);
    let (file, align) = match direct {
        Ok(file) => (file, DIRECT_READ_ALIGN_BYTES),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (std::fs::File::open(path)?, 1),
        Err(e) => return Err(e),
    };
    let len_aligned = len.div_ceil(align) * align;
    let mut buffer = vec![0u8; len_aligned + align];
    let start = buffer.as_ptr().align_offset(align);
    assert!(start < align, "a byte buffer can be aligned within `align` bytes");
    let base = buffer[start..].as_mut_ptr();
    let progress = ReadProgress::default();
    let abandoned = std::sync::atomic::AtomicBool::new(false);
    let chunk_bytes = chunk_bytes.max(1).div_ceil(align) * align;
    let target = ChunkTarget { base, len, len_aligned, align, chunk_bytes };
    let read_all = || {
        // Ended whatever happens, a panic included, so that `work` never
        // waits forever.
        let _end = EndOnDrop(&progress);
        read_chunks(&file, &target, &progress, &abandoned)
    };
    let arriving = Arriving(Source::Reading { base, progress: &progress });
    let (result, read) = std::thread::scope(|scope| {
        match std::thread::Builder::new().name("ringpost-read".into()).spawn_scoped(scope, read_all) {
            Ok(reader) => {
                let result = work(&arriving);
                abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
                (result, reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            }
            // No thread to spare: the read first, whole, then `work`.
            Err(_) => {
                let read = read_all();
                (work(&arriving), read)
            }
        }
    });
    drop(buffer);
    read?;
    Ok(result)
}

/// Marks a read ended when dropped, with the bytes it has published.
struct EndOnDrop<'a>(&'a ReadProgress);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Where a chunked read puts its bytes: `len` of them wanted, into an
/// `align`-aligned buffer of `len_aligned` bytes at `base`, `chunk_bytes`
/// (a multiple of `align`) at a time.
struct ChunkTarget {
    base: *mut u8,
    len: usize,
    len_aligned: usize,
    align: usize,
    chunk_bytes: usize,
}

// SAFETY: the reading thread writes only the part of the buffer past what
// it has published, which no other thread reads until it is published.
unsafe impl Sync for ChunkTarget {}

/// Reads `target.len` bytes chunk by chunk, publishing each;
/// stops early at the file's end or once `abandoned` is set (`work` is done
/// with the bytes).
fn read_chunks(
    file: &std::fs::File,
    target: &ChunkTarget,
    progress: &ReadProgress,
    abandoned: &std::sync::atomic::AtomicBool,
) -> io::Result<()> {
    assert!(target.chunk_bytes.is_multiple_of(target.align), "invariant: chunks keep direct reads aligned");
    let mut done = 0;
    while done < target.len && !abandoned.load(std::sync::atomic::Ordering::Relaxed) {
        let want = target.chunk_bytes.min(target.len - done);
        let room = (want.div_ceil(target.align) * target.align).min(target.len_aligned - done);
        // SAFETY: `[done, done + room)` lies inside the buffer, past every
        // published byte, and only this thread writes it.
        let chunk = unsafe { std::slice::from_raw_parts_mut(target.base.add(done), room) };
        let got = read_fully(file, chunk, done as u64, want, target.align)?.min(want);
        done += got;
        let ended = got < want || done == target.len;
        progress.publish(done, ended);
        if ended {
            break;
        }
    }
    Ok(())
}

/// Reads from `offset` into `bytes` until `len` bytes are in or the file
/// ends; returns how many were read. With `align` > 1 (a direct read) a
/// read that ends off an aligned length is the end of the file.
fn read_fully(file: &std::fs::File, bytes: &mut [u8], offset: u64, len: usize, align: usize) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < len {
        let n = file.read_at(&mut bytes[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
        if align > 1 && n % align != 0 {
            break;
        }
    }
    Ok(done)
}

/// Deepest chain of wrapped errors [`errno_of`] looks through.
const ERROR_CHAIN_DEPTH_MAX: usize = 8;

/// A glommio file error as an `io::Error` that keeps its errno: the
/// original error is the source, under the operation and the path.
pub fn io_error(error: GlommioError<()>) -> io::Error {
    match error {
        GlommioError::IoError(error) => error,
        GlommioError::EnhancedIoError { source, op, path, .. } => {
            let path = path.map(|p| p.display().to_string()).unwrap_or_default();
            io::Error::new(source.kind(), FileOpError { op, path, source })
        }
        other => other.into(),
    }
}

/// A file operation that failed, with the error the kernel returned.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FileOpError {
    pub op: &'static str,
    pub path: String,
    #[source]
    pub source: io::Error,
}

/// The errno behind an error: its own, or that of an error it wraps (an
/// `io::Error` inside another, a [`FileOpError`], a glommio error, any
/// `source()` chain), looking at most [`ERROR_CHAIN_DEPTH_MAX`] deep.
pub fn errno_of(error: &io::Error) -> Option<i32> {
    if let Some(errno) = error.raw_os_error() {
        return Some(errno);
    }
    let mut next = inner_error(error);
    for _ in 0..ERROR_CHAIN_DEPTH_MAX {
        let current = next?;
        if let Some(io) = current.downcast_ref::<io::Error>() {
            if let Some(errno) = io.raw_os_error() {
                return Some(errno);
            }
            // An io::Error's `source()` skips the error it carries; look at it.
            next = inner_error(io);
            continue;
        }
        if let Some(errno) = current.downcast_ref::<GlommioError<()>>().and_then(|g| g.raw_os_error()) {
            return Some(errno);
        }
        next = current.source();
    }
    None
}

fn inner_error(error: &io::Error) -> Option<&(dyn std::error::Error + 'static)> {
    error.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static))
}

/// Whether an error means the file system is full or the quota spent:
/// ENOSPC or EDQUOT anywhere in it, or the kinds the standard library gives
/// those errnos (kept by wrappers that drop the errno itself).
pub fn is_no_space(error: &io::Error) -> bool {
    matches!(errno_of(error), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(error.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

fn glommio_err(e: GlommioError<()>) -> io::Error {
    io_error(e)
}

/// After a flush returned success: fails with EROFS if the file's file
/// system has turned read-only. ext4 remounted read-only after an error
/// (`errors=remount-ro`, Debian's default) answers fdatasync with success
/// and flushes nothing, while a write into blocks already written (the
/// segments' zeroed-ahead blocks) may still go through: without this
/// check a batch could be acknowledged that is on no stable storage.
fn still_writable(fd: std::os::fd::RawFd, what: &str) -> io::Result<()> {
    // SAFETY: fstatvfs(2) fills the zeroed struct it is given; fd is open.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(fd, &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if stat.f_flag & libc::ST_RDONLY != 0 {
        let source = io::Error::from_raw_os_error(libc::EROFS);
        return Err(io::Error::new(
            source.kind(),
            format!("flushing {what}: the file system turned read-only, so the flush wrote nothing ({source})"),
        ));
    }
    Ok(())
}

/// Segment files on a real disk through glommio's DMA (O_DIRECT) files.
pub struct DiskStorage {
    dir: PathBuf,
    handle: glommio::io::Directory,
}

impl DiskStorage {
    /// Opens `dir` (which must exist and be absolute: glommio resolves
    /// relative names against it only when it is).
    pub async fn open(dir: &Path) -> io::Result<DiskStorage> {
        assert!(dir.is_absolute(), "spool directory {} must be absolute", dir.display());
        let handle = glommio::io::Directory::open(dir).await.map_err(glommio_err)?;
        Ok(DiskStorage { dir: dir.to_path_buf(), handle })
    }
}

pub struct DiskFile {
    file: DmaFile,
    path: PathBuf,
}

/// A body file on disk: a glommio buffered file (page cache, io_uring).
pub struct DiskBody {
    file: BufferedFile,
}

impl Storage for DiskStorage {
    type File = DiskFile;
    type Body = DiskBody;

    /// On a failed allocation (a full disk) the file just created is
    /// removed again: no empty segment is left behind.
    async fn create(&self, name: &str, size_bytes: u64) -> io::Result<DiskFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(self.dir.join(name))
            .await
            .map_err(glommio_err)?;
        if let Err(error) = file.pre_allocate(size_bytes, false).await {
            let _ = file.close().await;
            let _ = glommio::io::remove(self.dir.join(name)).await;
            return Err(glommio_err(error));
        }
        Ok(DiskFile { file, path: self.dir.join(name) })
    }

    async fn open(&self, name: &str) -> io::Result<DiskFile> {
        let file =
            OpenOptions::new().read(true).write(true).dma_open(self.dir.join(name)).await.map_err(glommio_err)?;
        Ok(DiskFile { file, path: self.dir.join(name) })
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        glommio::io::rename(self.dir.join(from), self.dir.join(to)).await.map_err(glommio_err)
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        glommio::io::remove(self.dir.join(name)).await.map_err(glommio_err)
    }

    async fn sync_dir(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        self.handle.sync().await.map_err(glommio_err)?;
        still_writable(self.handle.as_raw_fd(), "the spool directory")
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    async fn create_body(&self, name: &str) -> io::Result<DiskBody> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .buffered_open(self.dir.join(name))
            .await
            .map_err(glommio_err)?;
        Ok(DiskBody { file })
    }

    async fn open_body(&self, name: &str) -> io::Result<DiskBody> {
        let file = OpenOptions::new().read(true).buffered_open(self.dir.join(name)).await.map_err(glommio_err)?;
        Ok(DiskBody { file })
    }

    /// On a blocking thread: syncfs waits for the file system's writeback.
    async fn sync_filesystem(&self) -> io::Result<()> {
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || {
                use std::os::fd::AsRawFd;
                let handle = std::fs::File::open(&dir)?;
                // SAFETY: syncfs(2) on a descriptor this closure owns.
                if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                still_writable(handle.as_raw_fd(), "the spool's file system")
            })
            .await
    }
}

impl BodyFile for DiskBody {
    async fn write_at(&self, bytes: Vec<u8>, offset: u64) -> io::Result<usize> {
        self.file.write_at(bytes, offset).await.map_err(glommio_err)
    }

    async fn sync(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        self.file.fdatasync().await.map_err(glommio_err)?;
        still_writable(self.file.as_raw_fd(), "a body file")
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let read = self.file.read_at(offset, len).await.map_err(glommio_err)?;
        Ok(read.to_vec())
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(glommio_err)
    }

    async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(glommio_err)
    }
}

impl SegmentFile for DiskFile {
    async fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<usize> {
        let mut buffer = self.file.alloc_dma_buffer(bytes.len());
        buffer.as_bytes_mut().copy_from_slice(bytes);
        self.file.write_at(buffer, offset).await.map_err(glommio_err)
    }

    async fn sync(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        self.file.fdatasync().await.map_err(glommio_err)?;
        still_writable(self.file.as_raw_fd(), "a segment")
    }

    /// In writes of [`INITIALIZE_WRITE_BYTES`], one after another, so the
    /// zeros never cost more memory than one of them.
    async fn initialize(&self, offset: u64, len: usize) -> io::Result<()> {
        assert!(offset.is_multiple_of(4096) && len.is_multiple_of(4096), "initialize: {len} bytes at {offset}");
        let mut done = 0;
        while done < len {
            let chunk = INITIALIZE_WRITE_BYTES.min(len - done);
            let mut buffer = self.file.alloc_dma_buffer(chunk);
            buffer.as_bytes_mut().fill(0);
            let written = self.file.write_at(buffer, offset + done as u64).await.map_err(glommio_err)?;
            if written != chunk {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("initialize: {written} of {chunk} bytes at {}", offset + done as u64),
                ));
            }
            done += chunk;
        }
        Ok(())
    }

    /// Reads go through the page cache on a helper thread: they are the
    /// runners' sequential passes and recovery, never on the path of an
    /// acknowledgement, and need no alignment that way.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let path = self.path.clone();
        glommio::executor()
            .spawn_blocking(move || {
                let file = std::fs::File::open(&path)?;
                let mut bytes = vec![0u8; len];
                let done = read_fully(&file, &mut bytes, offset, len, 1)?;
                bytes.truncate(done);
                Ok(bytes)
            })
            .await
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(glommio_err)
    }

    async fn read_with<R, F>(&self, len: usize, work: F) -> io::Result<R>
    where
        F: FnOnce(&Arriving<'_>) -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = self.path.clone();
        glommio::executor().spawn_blocking(move || read_arriving(&path, len, READ_CHUNK_BYTES, work)).await
    }
}

/// What the next operations of a [`FaultStorage`] do wrong. Each fault
/// fires once, on the next matching operation, then clears itself. Segment
/// faults and body-file faults are apart, so a test says which file fails.
#[derive(Default)]
pub struct Faults {
    /// The next segment write fails with this errno, writing nothing.
    pub write_error: Cell<Option<i32>>,
    /// The next segment write stops after this many bytes and reports it
    /// (a short write).
    pub write_short_bytes: Cell<Option<usize>>,
    /// The next segment write puts only this many leading bytes on disk
    /// but reports success (a torn write, as a crash would leave it).
    pub write_torn_bytes: Cell<Option<usize>>,
    /// The next fdatasync fails with this errno.
    pub sync_error: Cell<Option<i32>>,
    /// The next file creation fails with this errno.
    pub create_error: Cell<Option<i32>>,
    /// Operations seen, for assertions: (writes, syncs).
    pub writes: Cell<u64>,
    pub syncs: Cell<u64>,
    /// The next body-file creation fails with this errno, creating nothing.
    pub body_create_error: Cell<Option<i32>>,
    /// The next body-file write fails with this errno, writing nothing.
    pub body_write_error: Cell<Option<i32>>,
    /// The next body-file write stops after this many bytes and reports it.
    pub body_write_short_bytes: Cell<Option<usize>>,
    /// The next body-file write puts only this many leading bytes in the
    /// file but reports success (a torn write: the rest stays as it was).
    pub body_write_torn_bytes: Cell<Option<usize>>,
    /// The next body-file fdatasync fails with this errno.
    pub body_sync_error: Cell<Option<i32>>,
    /// Body-file operations seen: (writes, syncs).
    pub body_writes: Cell<u64>,
    pub body_syncs: Cell<u64>,
    /// syncfs calls (`queue.body_sync = "syncfs"`).
    pub filesystem_syncs: Cell<u64>,
    /// Segment ranges zeroed ahead of the records, (offset, length), in order.
    pub initialized: RefCell<Vec<(u64, usize)>>,
}

/// The real storage with [`Faults`] injected: tests of the committer,
/// recovery and garbage collection run on it.
pub struct FaultStorage {
    inner: DiskStorage,
    pub faults: Rc<Faults>,
    /// Files created, by name, for tests that count them.
    pub created: RefCell<HashMap<String, u32>>,
}

impl FaultStorage {
    pub fn new(inner: DiskStorage) -> FaultStorage {
        FaultStorage { inner, faults: Rc::new(Faults::default()), created: RefCell::new(HashMap::new()) }
    }
}

pub struct FaultFile {
    inner: DiskFile,
    faults: Rc<Faults>,
}

pub struct FaultBody {
    inner: DiskBody,
    faults: Rc<Faults>,
}

impl Storage for FaultStorage {
    type File = FaultFile;
    type Body = FaultBody;

    async fn create(&self, name: &str, size_bytes: u64) -> io::Result<FaultFile> {
        if let Some(errno) = self.faults.create_error.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        *self.created.borrow_mut().entry(name.to_string()).or_default() += 1;
        let inner = self.inner.create(name, size_bytes).await?;
        Ok(FaultFile { inner, faults: self.faults.clone() })
    }

    async fn open(&self, name: &str) -> io::Result<FaultFile> {
        let inner = self.inner.open(name).await?;
        Ok(FaultFile { inner, faults: self.faults.clone() })
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to).await
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name).await
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir().await
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn path(&self) -> &Path {
        self.inner.path()
    }

    async fn create_body(&self, name: &str) -> io::Result<FaultBody> {
        if let Some(errno) = self.faults.body_create_error.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let inner = self.inner.create_body(name).await?;
        Ok(FaultBody { inner, faults: self.faults.clone() })
    }

    async fn open_body(&self, name: &str) -> io::Result<FaultBody> {
        let inner = self.inner.open_body(name).await?;
        Ok(FaultBody { inner, faults: self.faults.clone() })
    }

    /// Fails like a body file's flush when one is asked to.
    async fn sync_filesystem(&self) -> io::Result<()> {
        self.faults.filesystem_syncs.set(self.faults.filesystem_syncs.get() + 1);
        if let Some(errno) = self.faults.body_sync_error.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.inner.sync_filesystem().await
    }
}

impl BodyFile for FaultBody {
    async fn write_at(&self, bytes: Vec<u8>, offset: u64) -> io::Result<usize> {
        self.faults.body_writes.set(self.faults.body_writes.get() + 1);
        if let Some(errno) = self.faults.body_write_error.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if let Some(short) = self.faults.body_write_short_bytes.take() {
            let short = short.min(bytes.len());
            if short > 0 {
                let written = self.inner.write_at(bytes[..short].to_vec(), offset).await?;
                assert_eq!(written, short, "the disk under a fault test is not full");
            }
            return Ok(short);
        }
        if let Some(torn) = self.faults.body_write_torn_bytes.take() {
            let len = bytes.len();
            let torn = torn.min(len);
            if torn > 0 {
                let written = self.inner.write_at(bytes[..torn].to_vec(), offset).await?;
                assert_eq!(written, torn, "the disk under a fault test is not full");
            }
            return Ok(len);
        }
        self.inner.write_at(bytes, offset).await
    }

    async fn sync(&self) -> io::Result<()> {
        self.faults.body_syncs.set(self.faults.body_syncs.get() + 1);
        if let Some(errno) = self.faults.body_sync_error.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.inner.sync().await
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read_at(offset, len).await
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        self.inner.size_bytes().await
    }

    async fn close(self) -> io::Result<()> {
        self.inner.close().await
    }
}

impl SegmentFile for FaultFile {
    async fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<usize> {
        self.faults.writes.set(self.faults.writes.get() + 1);
        if let Some(errno) = self.faults.write_error.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if let Some(short) = self.faults.write_short_bytes.take() {
            let short = short.min(bytes.len()) / 4096 * 4096;
            if short > 0 {
                self.inner.write_at(&bytes[..short], offset).await?;
            }
            return Ok(short);
        }
        if let Some(torn) = self.faults.write_torn_bytes.take() {
            // Sectors past the tear keep what they held before.
            let torn = torn.min(bytes.len());
            let old = self.inner.read_at(offset, bytes.len()).await?;
            let mut mixed = bytes[..torn].to_vec();
            mixed.extend_from_slice(&old[torn.min(old.len())..]);
            mixed.resize(bytes.len(), 0);
            self.inner.write_at(&mixed, offset).await?;
            return Ok(bytes.len());
        }
        self.inner.write_at(bytes, offset).await
    }

    async fn sync(&self) -> io::Result<()> {
        self.faults.syncs.set(self.faults.syncs.get() + 1);
        if let Some(errno) = self.faults.sync_error.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.inner.sync().await
    }

    async fn initialize(&self, offset: u64, len: usize) -> io::Result<()> {
        self.faults.initialized.borrow_mut().push((offset, len));
        self.inner.initialize(offset, len).await
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read_at(offset, len).await
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        self.inner.size_bytes().await
    }

    async fn read_with<R, F>(&self, len: usize, work: F) -> io::Result<R>
    where
        F: FnOnce(&Arriving<'_>) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.inner.read_with(len, work).await
    }
}
