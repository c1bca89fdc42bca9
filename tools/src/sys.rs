//! Operating-system helpers shared by the tools: the open-file limit and
//! the block-device statistics behind a directory.

use std::io;
use std::path::{Path, PathBuf};

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// The whole-disk directory in /sys for the filesystem holding `dir`:
/// st_dev gives MAJ:MIN, /sys/dev/block/MAJ:MIN is the device, and a
/// partition (a directory with a `partition` file) is replaced by its
/// parent disk, because flush requests are counted on the disk.
pub fn sys_block_dir_for(dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let link = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let real = std::fs::canonicalize(&link).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{} (filesystem on device {major}:{minor}): {e}", link.display()),
        )
    })?;
    if real.join("partition").exists() {
        if let Some(parent) = real.parent() {
            return Ok(parent.to_path_buf());
        }
    }
    Ok(real)
}

/// Counters from /sys/block/<dev>/stat (Documentation/block/stat.rst).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStat {
    /// Field 5: write I/Os completed.
    pub write_ios: u64,
    /// Field 7: sectors (512 bytes) written.
    pub write_sectors: u64,
    /// Field 16: flush requests completed (kernels 5.5 and later).
    pub flush_ios: u64,
}

impl BlockStat {
    pub fn read(sys_dir: &Path) -> io::Result<BlockStat> {
        let text = std::fs::read_to_string(sys_dir.join("stat"))?;
        BlockStat::parse(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad stat line {text:?}")))
    }

    /// Parses the whitespace-separated fields; fields are 1-based in the
    /// kernel's documentation, so field N is index N-1 here.
    pub fn parse(text: &str) -> Option<BlockStat> {
        let fields: Vec<u64> = text
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        if fields.len() < 11 {
            return None;
        }
        Some(BlockStat {
            write_ios: fields[4],
            write_sectors: fields[6],
            flush_ios: fields.get(15).copied().unwrap_or(0),
        })
    }

    pub fn since(&self, before: &BlockStat) -> BlockStat {
        BlockStat {
            write_ios: self.write_ios.saturating_sub(before.write_ios),
            write_sectors: self.write_sectors.saturating_sub(before.write_sectors),
            flush_ios: self.flush_ios.saturating_sub(before.flush_ios),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_line() {
        let line = "   57056    10493  8682690    69974     6243    20704  4109832    11534        0    10400    82025     5589       29   637240      505      348       10\n";
        let s = BlockStat::parse(line).unwrap();
        assert_eq!(
            s,
            BlockStat {
                write_ios: 6243,
                write_sectors: 4_109_832,
                flush_ios: 348
            }
        );
        assert!(BlockStat::parse("1 2 x").is_none());
    }

    #[test]
    fn finds_a_device_for_tmp() {
        // Not every test machine has a block device behind /tmp (tmpfs).
        if let Ok(dir) = sys_block_dir_for(Path::new(".")) {
            assert!(dir.join("stat").exists());
        }
    }
}
