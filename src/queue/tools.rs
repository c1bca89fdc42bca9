//! `ringpost queue list | show ID | stats | dump SEGMENT`: the operator's
//! view of a spool, running or stopped.
//!
//! Place in the pipeline: outside it. These commands read the segment
//! files with ordinary reads (never writing, never locking) and run the
//! same recovery scan as start-up (`recover.rs`), so what they show is what
//! a restart would find. On a running server a snapshot can be a batch
//! behind, or see a segment vanish to garbage collection between two reads
//! (it is then skipped): the numbers are exact for a stopped spool.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use queue_format::LogKind;

use super::log::{kind_name, parse_segment_name};
use super::recover::Scan;
use super::{Body, Envelope, RcptState};
use crate::config::Config;

/// One shard directory, scanned.
pub struct ShardView {
    pub dir: PathBuf,
    pub scan: Scan,
    pub segment_bytes: [u64; 2],
    pub body_files: usize,
    pub body_bytes: u64,
    /// Body log segment files, and their bytes.
    pub body_log_segments: usize,
    pub body_log_bytes: u64,
    pub free_segments: usize,
}

/// Every `shard-N` directory under the configured spools.
pub fn shard_dirs(config: &Config) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for spool in &config.queue.spool {
        let entries = match std::fs::read_dir(spool) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("shard-") && entry.path().is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    Ok(dirs)
}

/// Reads a shard directory like recovery does, keeping every envelope.
pub fn scan_shard(dir: &Path) -> std::io::Result<ShardView> {
    let mut segments = Vec::new();
    let mut view = ShardView {
        dir: dir.to_path_buf(),
        scan: Scan::default(),
        segment_bytes: [0, 0],
        body_files: 0,
        body_bytes: 0,
        body_log_segments: 0,
        body_log_bytes: 0,
        free_segments: 0,
    };
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((LogKind::Body, _)) = parse_segment_name(&name) {
            view.body_log_segments += 1;
            view.body_log_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        } else if let Some((kind, seq)) = parse_segment_name(&name) {
            segments.push((kind, seq, name));
        } else if name.starts_with("body-") {
            view.body_files += 1;
            view.body_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        } else if name.starts_with("free-") {
            view.free_segments += 1;
        }
    }
    segments.sort_by_key(|(kind, seq, _)| (super::recover::log_index(*kind), *seq));
    for (kind, seq, name) in segments {
        // Read whole, so bounded: no segment is larger than the format allows.
        if let Ok(metadata) = std::fs::metadata(dir.join(&name)) {
            if metadata.len() > queue_format::SEGMENT_SIZE_BYTES_MAX {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "segment {} is {} bytes, above the format's largest segment ({} bytes): not read",
                        dir.join(&name).display(),
                        metadata.len(),
                        queue_format::SEGMENT_SIZE_BYTES_MAX
                    ),
                ));
            }
        }
        let bytes = match std::fs::read(dir.join(&name)) {
            Ok(bytes) => bytes,
            // Collected since the listing: it held nothing live.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        view.segment_bytes[super::recover::log_index(kind)] += bytes.len() as u64;
        view.scan.add_segment(kind, seq, &name, &bytes, true);
    }
    Ok(view)
}

fn time_text(unix_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    crate::smtp::received::rfc5322_date(time)
}

fn state_text(state: RcptState) -> &'static str {
    match state {
        RcptState::Pending => "pending",
        RcptState::Delivered => "delivered",
        RcptState::Failed => "failed",
    }
}

fn live_envelopes(view: &ShardView) -> Vec<&Envelope> {
    let mut envs: Vec<&Envelope> = view.scan.live.values().filter_map(|c| c.envelope.as_deref()).collect();
    envs.sort_by(|a, b| a.id.cmp(&b.id));
    envs
}

/// `queue list`: one paragraph per live message, like `mailq`.
pub fn list(config: &Config) -> std::io::Result<String> {
    let mut out = String::new();
    let mut count = 0usize;
    let mut bytes = 0u64;
    for dir in shard_dirs(config)? {
        let view = scan_shard(&dir)?;
        for env in live_envelopes(&view) {
            count += 1;
            bytes += env.size_bytes;
            let sender = match &env.sender {
                crate::smtp::address::ReversePath::Null => "<>".to_string(),
                crate::smtp::address::ReversePath::Path(a) => a.to_string(),
            };
            let _ = writeln!(
                out,
                "{:<16}{} {:>9} {}  attempts={} next={}  {}",
                env.id,
                if env.held { "!" } else { "" },
                env.size_bytes,
                time_text(env.arrival_unix_ms),
                env.attempt_count,
                time_text(env.next_retry_unix_ms),
                sender
            );
            for r in env.recipients.iter().filter(|r| r.state == RcptState::Pending) {
                if r.last_reply.is_empty() {
                    let _ = writeln!(out, "    {}", r.address);
                } else {
                    let _ = writeln!(out, "    {}  ({})", r.address, r.last_reply);
                }
            }
        }
    }
    if count == 0 {
        out.push_str("Mail queue is empty\n");
    } else {
        let _ =
            writeln!(out, "-- {} KiB in {count} message{}.", bytes.div_ceil(1024), if count == 1 { "" } else { "s" });
    }
    Ok(out)
}

/// `queue show ID`: the whole envelope, where its record and body are.
pub fn show(config: &Config, id: &str) -> std::io::Result<Option<String>> {
    let qid_text = id.to_ascii_uppercase();
    let Ok(qid) = super::parse_queue_id(&qid_text) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{id:?} is not a queue id (16 hex digits)"),
        ));
    };
    for dir in shard_dirs(config)? {
        let view = scan_shard(&dir)?;
        let Some(candidate) = view.scan.live.get(&qid) else { continue };
        let Some(env) = candidate.envelope.as_deref() else { continue };
        let mut out = String::new();
        let _ = writeln!(out, "id: {}", env.id);
        let _ = writeln!(out, "spool: {}", dir.display());
        let location = candidate.location;
        let _ = writeln!(
            out,
            "record: {} offset {} ({} bytes)",
            super::log::segment_name(location.log, location.segment_sequence),
            location.offset,
            location.size_bytes
        );
        let _ = writeln!(out, "from: {}", env.sender);
        let _ = writeln!(out, "arrival: {}", time_text(env.arrival_unix_ms));
        let _ = writeln!(out, "attempts: {}", env.attempt_count);
        if env.held {
            let _ = writeln!(out, "held: yes (ringpost queue release {})", env.id);
        }
        if env.delay_warned {
            let _ = writeln!(out, "delay_warning: sent");
        }
        if !env.dsn.is_empty() {
            let _ = writeln!(out, "dsn:{}", env.dsn.wire());
        }
        let _ = writeln!(out, "next_retry: {}", time_text(env.next_retry_unix_ms));
        let _ = writeln!(out, "size: {}", env.size_bytes);
        let body = match &env.body {
            Body::Inline(_) => "inline".to_string(),
            Body::File { checksum, .. } => format!("file body-{} (crc32c {checksum:08x})", env.id),
            Body::Log { checksum, extents, .. } => {
                let extents: Vec<String> = queue_format::body_extents(extents)
                    .map(|e| {
                        format!(
                            "{}+{}:{}",
                            super::bodylog::segment_name(e.segment_sequence),
                            e.offset_bytes,
                            e.size_bytes
                        )
                    })
                    .collect();
                format!("log {} (crc32c {checksum:08x})", extents.join(" "))
            }
        };
        let _ = writeln!(out, "body: {body}");
        let _ =
            writeln!(out, "flags: 8bitmime={} binarymime={} smtputf8={}", env.body_8bit, env.body_binary, env.smtputf8);
        let _ = writeln!(out, "client: {} helo={}", env.client, env.helo);
        for (i, r) in env.recipients.iter().enumerate() {
            let _ = writeln!(out, "rcpt[{i}]: {} {} {}", r.address, state_text(r.state), r.last_reply);
            if !r.dsn.is_empty() {
                let _ = writeln!(out, "rcpt[{i}] dsn:{}", r.dsn.wire());
            }
        }
        return Ok(Some(out));
    }
    Ok(None)
}

/// `queue stats`: per shard and in total, as `key=value` lines.
pub fn stats(config: &Config) -> std::io::Result<String> {
    let mut out = String::new();
    let mut total_live = 0usize;
    let mut total_segments = 0usize;
    for dir in shard_dirs(config)? {
        let view = scan_shard(&dir)?;
        let live = view.scan.live.len();
        let mut per_log = [(0usize, 0usize); 2];
        for candidate in view.scan.live.values() {
            let slot = super::recover::log_index(candidate.location.log);
            per_log[slot].0 += 1;
        }
        for segment in &view.scan.segments {
            per_log[super::recover::log_index(segment.kind)].1 += 1;
        }
        let deferred = view.scan.live.values().filter(|c| c.location.log == LogKind::Retry).count();
        total_live += live;
        total_segments += view.scan.segments.len();
        let _ = writeln!(
            out,
            "shard={} live={live} fresh={} deferred={deferred} head_segments={} retry_segments={} head_bytes={} retry_bytes={} free_segments={} body_files={} body_bytes={} body_log_segments={} body_log_bytes={} records={} damaged={}",
            dir.display(),
            per_log[0].0,
            per_log[0].1,
            per_log[1].1,
            view.segment_bytes[0],
            view.segment_bytes[1],
            view.free_segments,
            view.body_files,
            view.body_bytes,
            view.body_log_segments,
            view.body_log_bytes,
            view.scan.records,
            view.scan.damaged().count(),
        );
        for segment in view.scan.damaged() {
            let _ = writeln!(
                out,
                "  damaged {} ({}): {}",
                segment.name,
                kind_name(segment.kind),
                segment.problem.as_deref().unwrap_or("")
            );
        }
    }
    let _ = writeln!(out, "total live={total_live} segments={total_segments}");
    Ok(out)
}

/// `queue dump SEGMENT`: every record of a segment file, decoded.
pub fn dump(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(queue_format::dump::segment(&bytes))
}
