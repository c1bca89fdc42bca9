//! File-per-message spool: the durable stand-in behind the queue interface.
//!
//! Layout of a shard's directory: `<id>.body` (the content, CRLF line
//! endings, written while it is received), `<id>.env` (the envelope, JSON).
//! Commit order: body written and fdatasync'ed; envelope written to
//! `<id>.env.tmp` and fdatasync'ed; renamed to `<id>.env`; directory
//! fsync'ed. Only then is the message acknowledged. A crash before the
//! rename leaves a body without envelope (or a `.tmp`): both are removed at
//! start-up and the message was never acknowledged. A crash after it leaves
//! a complete message that recovery finds.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use glommio::io::{BufferedFile, Directory};

use super::{Envelope, QueueError};

/// Body bytes gathered before one write to the body file.
const BODY_WRITE_BYTES: usize = 64 * 1024;

pub struct Queue {
    dir: PathBuf,
    dir_handle: Directory,
    shard_index: u16,
    last_id: Cell<u64>,
}

fn io_err(e: glommio::GlommioError<()>) -> std::io::Error {
    e.into()
}

impl Queue {
    /// Opens (creating if needed) the shard's spool directory, removes what
    /// an interrupted commit left behind, and returns every live envelope.
    pub async fn open(spool: &Path, shard_index: u16) -> std::io::Result<(Queue, Vec<Envelope>)> {
        let dir = spool.join(format!("shard-{shard_index}"));
        std::fs::create_dir_all(&dir)?;
        // Absolute, so that later renames and removals do not depend on the
        // working directory.
        let dir = std::fs::canonicalize(&dir)?;
        let dir_handle = Directory::open(&dir).await.map_err(io_err)?;
        let mut envelopes = Vec::new();
        let mut bodies = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
            } else if let Some(id) = name.strip_suffix(".body") {
                bodies.push(id.to_string());
            } else if name.ends_with(".env") {
                let bytes = std::fs::read(entry.path())?;
                match serde_json::from_slice::<Envelope>(&bytes) {
                    Ok(env) => envelopes.push(env),
                    Err(e) => crate::log::event(
                        "queue_corrupt",
                        &[("file", &entry.path().display()), ("error", &e)],
                    ),
                }
            }
        }
        for id in bodies {
            if !envelopes.iter().any(|e| e.id == id) {
                std::fs::remove_file(dir.join(format!("{id}.body")))?;
            }
        }
        envelopes.sort_by(|a, b| a.id.cmp(&b.id));
        let queue = Queue { dir, dir_handle, shard_index, last_id: Cell::new(0) };
        Ok((queue, envelopes))
    }

    /// A new queue id: microseconds since the epoch (strictly increasing
    /// within the shard) and the shard index, in upper-case hex.
    pub fn next_id(&self) -> String {
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
        let id = now_us.max(self.last_id.get() + 1);
        self.last_id.set(id);
        format!("{:014X}{:02X}", id, self.shard_index)
    }

    pub fn body_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.body"))
    }

    fn env_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.env"))
    }

    /// Starts a new message; its content is streamed with [`MessageWriter::write`].
    pub async fn create(&self) -> Result<MessageWriter, QueueError> {
        let id = self.next_id();
        let file = BufferedFile::create(self.body_path(&id)).await.map_err(io_err)?;
        Ok(MessageWriter { id, file: Some(file), offset_bytes: 0, buffer: Vec::new() })
    }

    /// Makes `env` the durable envelope of its message (first commit or a
    /// replacement after a delivery attempt).
    pub async fn write_envelope(&self, env: &Envelope) -> Result<(), QueueError> {
        let bytes = serde_json::to_vec(env).map_err(|e| QueueError::Io(e.into()))?;
        let tmp = self.dir.join(format!("{}.env.tmp", env.id));
        let file = BufferedFile::create(&tmp).await.map_err(io_err)?;
        write_all_at(&file, bytes, 0).await?;
        file.fdatasync().await.map_err(io_err)?;
        file.close().await.map_err(io_err)?;
        glommio::io::rename(&tmp, self.env_path(&env.id)).await.map_err(io_err)?;
        self.dir_handle.sync().await.map_err(io_err)?;
        Ok(())
    }

    /// Records progress on a message that stays queued.
    pub async fn defer(&self, env: &Envelope) -> Result<(), QueueError> {
        self.write_envelope(env).await
    }

    /// Removes a message whose recipients are all delivered or failed. The
    /// envelope goes first: a crash in between leaves an orphan body, which
    /// start-up removes.
    pub async fn complete(&self, id: &str) -> Result<(), QueueError> {
        glommio::io::remove(self.env_path(id)).await.map_err(io_err)?;
        glommio::io::remove(self.body_path(id)).await.map_err(io_err)?;
        Ok(())
    }
}

/// A message being received: its content goes straight to its body file.
pub struct MessageWriter {
    id: String,
    file: Option<BufferedFile>,
    offset_bytes: u64,
    buffer: Vec<u8>,
}

/// Writes `bytes` at `offset`. A short write on a regular file means the
/// file system ran out of room part-way; it is reported as an error (the
/// message is refused with a 4xx) instead of being retried, which also
/// spares copying every buffer in case it were.
async fn write_all_at(file: &BufferedFile, bytes: Vec<u8>, offset: u64) -> Result<(), QueueError> {
    let len = bytes.len();
    if len == 0 {
        return Ok(());
    }
    let written = file.write_at(bytes, offset).await.map_err(io_err)?;
    if written != len {
        return Err(QueueError::NoSpace(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write: {written} of {len} bytes"),
        )));
    }
    Ok(())
}

impl MessageWriter {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn size_bytes(&self) -> u64 {
        self.offset_bytes + self.buffer.len() as u64
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), QueueError> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= BODY_WRITE_BYTES {
            self.flush_buffer().await?;
        }
        Ok(())
    }

    async fn flush_buffer(&mut self) -> Result<(), QueueError> {
        let file = self.file.as_ref().expect("writer used after commit or abort");
        let bytes = std::mem::take(&mut self.buffer);
        let len = bytes.len() as u64;
        write_all_at(file, bytes, self.offset_bytes).await?;
        self.offset_bytes += len;
        Ok(())
    }

    /// Makes the message durable: body flushed, then the envelope. Returns
    /// only when both are on stable storage.
    pub async fn commit(mut self, queue: &Queue, env: &Envelope) -> Result<(), QueueError> {
        debug_assert_eq!(env.id, self.id);
        let result = self.commit_inner(queue, env).await;
        if result.is_err() {
            self.discard(queue).await;
        }
        result
    }

    async fn commit_inner(&mut self, queue: &Queue, env: &Envelope) -> Result<(), QueueError> {
        self.flush_buffer().await?;
        let file = self.file.take().expect("writer committed twice");
        file.fdatasync().await.map_err(io_err)?;
        file.close().await.map_err(io_err)?;
        queue.write_envelope(env).await
    }

    /// Drops a message that will not be acknowledged.
    pub async fn abort(mut self, queue: &Queue) {
        self.discard(queue).await;
    }

    async fn discard(&mut self, queue: &Queue) {
        if let Some(file) = self.file.take() {
            let _ = file.close().await;
        }
        let _ = glommio::io::remove(queue.body_path(&self.id)).await;
        let _ = glommio::io::remove(queue.dir.join(format!("{}.env.tmp", self.id))).await;
    }
}
