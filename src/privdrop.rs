//! Privilege separation. With `server.user` set, ringpost is started as
//! root, does what needs root — binds its listeners (ports below 1024) and
//! the control socket, reads TLS keys and tables that may be readable by
//! root only —, gives the spool directories and the control socket to that
//! user, then becomes the user for good: `setgroups` to the user's
//! supplementary groups, `setgid` to its primary group, `setuid`. It checks
//! the result in `/proc/self/status` of every thread (real, effective,
//! saved and file-system ids all the target's) and that root cannot be
//! regained, and refuses to go on otherwise.
//!
//! Place in the pipeline: `crate::shard::run` calls [`hand_over`] and
//! [`become_user`] after every shard's listener is bound and before any
//! shard starts, so no session, delivery or spool file ever exists as root.
//!
//! Without `server.user`, running as root is refused when a configuration
//! file is given, unless `server.allow_root = true` ([`root_refusal`]); the
//! embedded default configuration (no `-c`), meant for trying ringpost out,
//! runs as whoever starts it.
//!
//! After the drop the server itself cannot switch users. Pipe transports
//! and pipe scanners without a `user`/`group` of their own run as
//! `server.user`; for those configured with other ids, [`start_pipe_helper`]
//! starts, still as root and before the drop, the pipe helper
//! (`crate::pipehelper`): the only process left as root, with CAP_SETUID,
//! CAP_SETGID and CAP_KILL only, allowed to start nothing but the (argv,
//! uid, gid) entries of [`helper_entries`], to report their exit and to
//! kill their process groups. Nothing else runs as root after the drop;
//! without such pipes no helper is started.

use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::{Config, ScannerKind, TransportKind};
use crate::pipehelper::{Entry, Kind};

/// The largest buffer offered to `getpwnam_r`.
const PASSWD_BUFFER_MAX: usize = 1 << 20;
/// The most supplementary groups taken from `getgrouplist`.
const GROUPS_MAX: usize = 65_536;
/// How deep the spool is walked when it is given to the user (the spool
/// is `<dir>/shard-N/<file>`; anything deeper is not ringpost's).
const SPOOL_DEPTH_MAX: usize = 4;

/// The account ringpost runs as after the drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (`getgrouplist`: the primary group included),
    /// sorted, without duplicates.
    pub groups: Vec<u32>,
}

/// Looks `name` up with `getpwnam_r` and its groups with `getgrouplist`.
pub fn lookup(name: &str) -> Result<Identity, String> {
    let c_name = CString::new(name).map_err(|_| format!("server.user {name:?}: contains a NUL"))?;
    // SAFETY: sysconf only reads its argument.
    let suggested = unsafe { libc::sysconf(libc::_SC_GETPW_R_SIZE_MAX) };
    let mut size = usize::try_from(suggested).ok().filter(|&n| n > 0).unwrap_or(1024);
    let (uid, gid) = loop {
        let mut buf: Vec<libc::c_char> = vec![0; size];
        // SAFETY: a zeroed passwd is a valid value of a plain C struct;
        // getpwnam_r fills it and points its strings into `buf`.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the length given; `found` is
        // either null or `&mut entry`.
        let rc = unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE && size < PASSWD_BUFFER_MAX {
            size *= 2;
            continue;
        }
        if rc != 0 {
            return Err(format!("server.user {name:?}: getpwnam_r: {}", std::io::Error::from_raw_os_error(rc)));
        }
        if found.is_null() {
            return Err(format!("server.user {name:?}: no such user"));
        }
        break (entry.pw_uid, entry.pw_gid);
    };
    let groups = group_list(&c_name, gid).map_err(|e| format!("server.user {name:?}: {e}"))?;
    Ok(Identity { name: name.to_string(), uid, gid, groups })
}

/// The user's groups as `initgroups` would set them: `gid` and every
/// group listing the user.
fn group_list(name: &CStr, gid: u32) -> Result<Vec<u32>, String> {
    let mut capacity: usize = 32;
    loop {
        let mut groups: Vec<libc::gid_t> = vec![0; capacity];
        let mut count = libc::c_int::try_from(capacity).map_err(|_| "too many groups".to_string())?;
        // SAFETY: `groups` holds `count` entries; getgrouplist writes at
        // most that many and sets `count` to how many there are.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        let count = usize::try_from(count).unwrap_or(0);
        if rc >= 0 {
            groups.truncate(count.min(capacity));
            groups.sort_unstable();
            groups.dedup();
            return Ok(groups);
        }
        if capacity >= GROUPS_MAX {
            return Err(format!("more than {GROUPS_MAX} groups"));
        }
        capacity = count.max(capacity * 2).min(GROUPS_MAX);
    }
}

/// Why running as `euid` is refused, if it is: root without
/// `server.user`, unless `server.allow_root` is set or the configuration is
/// the embedded default (`from_file` false).
pub fn root_refusal(euid: u32, config: &Config, from_file: bool) -> Option<String> {
    if euid != 0 || !from_file || config.server.user.is_some() || config.server.allow_root {
        return None;
    }
    Some(
        "refusing to run as root: set server.user to the account ringpost should run as \
         (for example \"ringpost\"), or server.allow_root = true to keep running as root"
            .to_string(),
    )
}

/// Whether the process must drop to `target`, is already it, or cannot
/// become it (started neither as root nor as that user).
pub fn needs_drop(target: &Identity) -> Result<bool, String> {
    // SAFETY: these calls only read the process's ids.
    let (uid, euid, gid, egid) = unsafe { (libc::getuid(), libc::geteuid(), libc::getgid(), libc::getegid()) };
    if euid == 0 {
        return Ok(true);
    }
    if (uid, euid, gid, egid) == (target.uid, target.uid, target.gid, target.gid) {
        return Ok(false);
    }
    Err(format!(
        "server.user = {:?}: ringpost must be started as root to become that user (it runs as uid {euid})",
        target.name
    ))
}

/// The uid and gid a pipe transport or scanner would run as, from its
/// `user` and `group` (unset: `target`'s).
fn pipe_ids(user: Option<&str>, group: Option<&str>, target: &Identity) -> Result<(u32, u32), String> {
    let (uid, primary) = match user {
        Some(user) => crate::deliver::pipe::lookup_user(user)?,
        None => (target.uid, target.gid),
    };
    let gid = match group {
        Some(group) => crate::deliver::pipe::lookup_group(group)?,
        None => primary,
    };
    Ok((uid, gid))
}

/// A configured pipe: what it is called in errors, its kind, command, user
/// and group.
type ConfiguredPipe<'a> = (String, Kind, &'a [String], Option<&'a str>, Option<&'a str>);

fn configured_pipes(config: &Config) -> Vec<ConfiguredPipe<'_>> {
    let mut pipes = Vec::new();
    for (index, rule) in config.transports.iter().enumerate() {
        if rule.transport == TransportKind::Pipe {
            let what = format!("[[transport]] #{} (pipe {:?})", index + 1, rule.command.first().map_or("", |c| c));
            pipes.push((what, Kind::Transport, &rule.command[..], rule.user.as_deref(), rule.group.as_deref()));
        }
    }
    for scanner in &config.scanners {
        if scanner.kind == ScannerKind::Pipe {
            let what = format!("[[scanner]] {:?}", scanner.name);
            pipes.push((what, Kind::Scanner, &scanner.command[..], scanner.user.as_deref(), scanner.group.as_deref()));
        }
    }
    pipes
}

/// Checks that every pipe transport's and pipe scanner's `user` and
/// `group` resolve; those not `target`'s run through the pipe helper
/// ([`helper_entries`]).
pub fn check_pipes(config: &Config, target: &Identity) -> Result<(), String> {
    helper_entries(config, target).map(|_| ())
}

/// The pipe helper's allowed list: one entry per configured pipe whose
/// uid or gid is not `target`'s (argv as configured, the ids, and the
/// groups `setgroups` gives the child: the user's, by its name, or only
/// the gid when the user is a bare number). Empty: no helper is needed.
pub fn helper_entries(config: &Config, target: &Identity) -> Result<Vec<Entry>, String> {
    let mut entries: Vec<Entry> = Vec::new();
    for (what, kind, command, user, group) in configured_pipes(config) {
        let (uid, gid) = pipe_ids(user, group, target).map_err(|e| format!("{what}: {e}"))?;
        if (uid, gid) == (target.uid, target.gid) || command.is_empty() {
            continue;
        }
        let groups = match user.map(lookup) {
            Some(Ok(identity)) if identity.uid == uid => {
                let name = CString::new(identity.name).map_err(|_| format!("{what}: user contains a NUL"))?;
                group_list(&name, gid).map_err(|e| format!("{what}: {e}"))?
            }
            Some(_) => vec![gid],
            None => {
                let mut groups = target.groups.clone();
                groups.push(gid);
                groups.sort_unstable();
                groups.dedup();
                groups
            }
        };
        let entry = Entry { kind, argv: command.to_vec(), uid, gid, groups };
        if !entries.contains(&entry) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// Starts the pipe helper (`crate::pipehelper`) with the allowed list of
/// `config` when some pipe needs ids other than `target`'s; root only,
/// before [`become_user`].
pub fn start_pipe_helper(config: &Config, target: &Identity) -> Result<(), String> {
    let entries = helper_entries(config, target)?;
    if entries.is_empty() {
        return Ok(());
    }
    let count = entries.len();
    crate::pipehelper::start(entries)?;
    crate::log::event(
        "pipe_helper_started",
        &[("pid", &crate::pipehelper::helper_pid().unwrap_or(0)), ("entries", &count)],
    );
    Ok(())
}

/// Creates `dir` if it is missing and gives it to `target` (for the
/// control socket's directory, before the socket is bound).
pub fn prepare_dir(dir: &Path, target: &Identity) -> Result<(), String> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    give(dir, target)
}

/// Gives what ringpost writes to `target` before the drop: every spool
/// directory (created if missing) with what it holds, the control socket,
/// and the vacation memory with its WAL files.
pub fn hand_over(config: &Config, control_socket: Option<&Path>, target: &Identity) -> Result<(), String> {
    for dir in &config.queue.spool {
        std::fs::create_dir_all(dir).map_err(|e| format!("queue.spool {}: {e}", dir.display()))?;
        give_tree(dir, target, SPOOL_DEPTH_MAX).map_err(|e| format!("queue.spool {e}"))?;
    }
    if let Some(path) = control_socket {
        give(path, target).map_err(|e| format!("control socket {e}"))?;
    }
    if let Some(db) = config.vacation_db_path() {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            let path = Path::new(&name);
            if path.exists() {
                give(path, target).map_err(|e| format!("sieve.vacation_db {e}"))?;
            }
        }
    }
    Ok(())
}

/// `lchown(path)` to `target` unless it is already its.
fn give(path: &Path, target: &Identity) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if (meta.uid(), meta.gid()) != (target.uid, target.gid) {
        std::os::unix::fs::lchown(path, Some(target.uid), Some(target.gid))
            .map_err(|e| format!("{}: chown to {}: {e}", path.display(), target.name))?;
    }
    Ok(())
}

/// `give` for `path` and, if it is a directory (not a symbolic link),
/// everything in it down to `depth` levels.
fn give_tree(path: &Path, target: &Identity, depth: usize) -> Result<(), String> {
    give(path, target)?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_dir() || depth == 0 {
        return Ok(());
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
        give_tree(&entry.path(), target, depth - 1)?;
    }
    Ok(())
}

/// Becomes `target` for good: supplementary groups, group, user, in that
/// order (each step needs the privilege the next one gives up), then
/// [`verify`]. Every thread of the process changes (glibc applies the ids
/// to all of them).
pub fn become_user(target: &Identity) -> Result<(), String> {
    let fail = |what: &str| {
        format!("cannot drop privileges to {:?}: {what}: {}", target.name, std::io::Error::last_os_error())
    };
    // SAFETY: `groups` is valid for `groups.len()` entries; the others take
    // plain integers.
    unsafe {
        if libc::setgroups(target.groups.len(), target.groups.as_ptr()) != 0 {
            return Err(fail("setgroups"));
        }
        if libc::setgid(target.gid) != 0 {
            return Err(fail("setgid"));
        }
        if libc::setuid(target.uid) != 0 {
            return Err(fail("setuid"));
        }
    }
    verify(target)
}

/// Checks that every thread of the process runs as `target` (its
/// `/proc/self/task/*/status`, and `/proc/self/status`), and that root
/// cannot be regained.
pub fn verify(target: &Identity) -> Result<(), String> {
    let mut files = vec![std::path::PathBuf::from("/proc/self/status")];
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| format!("/proc/self/task: {e}"))?;
    for task in tasks {
        let task = task.map_err(|e| format!("/proc/self/task: {e}"))?;
        files.push(task.path().join("status"));
    }
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        check_status(&text, target)
            .map_err(|e| format!("privileges not dropped to {:?}: {}: {e}", target.name, file.display()))?;
    }
    if target.uid != 0 {
        // SAFETY: setuid takes a plain integer; success here is the failure
        // being checked for.
        if unsafe { libc::setuid(0) } == 0 {
            return Err(format!("privileges not dropped to {:?}: setuid(0) succeeded", target.name));
        }
    }
    Ok(())
}

/// Checks a `/proc/<pid>/status` text: the `Uid:` and `Gid:` lines (real,
/// effective, saved, file system) must all be `target`'s and `Groups:`
/// exactly its groups.
pub fn check_status(text: &str, target: &Identity) -> Result<(), String> {
    let ids = |key: &str| -> Result<Vec<u32>, String> {
        let line = text.lines().find_map(|line| line.strip_prefix(key)).ok_or_else(|| format!("no {key} line"))?;
        line.split_ascii_whitespace()
            .map(|field| field.parse::<u32>().map_err(|_| format!("{key} {field:?} is not a number")))
            .collect()
    };
    let uids = ids("Uid:")?;
    if uids.len() != 4 || uids.iter().any(|&id| id != target.uid) {
        return Err(format!("Uid: {uids:?}, not {} four times", target.uid));
    }
    let gids = ids("Gid:")?;
    if gids.len() != 4 || gids.iter().any(|&id| id != target.gid) {
        return Err(format!("Gid: {gids:?}, not {} four times", target.gid));
    }
    let mut groups = ids("Groups:")?;
    groups.sort_unstable();
    groups.dedup();
    if groups != target.groups {
        return Err(format!("Groups: {groups:?}, not {:?}", target.groups));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(uid: u32, gid: u32, groups: &[u32]) -> Identity {
        Identity { name: "mail-relay".into(), uid, gid, groups: groups.to_vec() }
    }

    const STATUS: &str = "Name:\tringpost\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n\
                          Uid:\t998\t998\t998\t998\nGid:\t997\t997\t997\t997\nFDSize:\t64\nGroups:\t997 \n";

    #[test]
    fn status_with_every_id_the_targets_passes() {
        assert_eq!(check_status(STATUS, &identity(998, 997, &[997])), Ok(()));
    }

    #[test]
    fn status_with_any_other_id_fails() {
        assert!(check_status(STATUS, &identity(999, 997, &[997])).is_err());
        assert!(check_status(STATUS, &identity(998, 996, &[997])).is_err());
        assert!(check_status(STATUS, &identity(998, 997, &[997, 4])).is_err(), "a group missing");
        let saved_root = STATUS.replace("Uid:\t998\t998\t998\t998", "Uid:\t998\t998\t0\t998");
        assert!(check_status(&saved_root, &identity(998, 997, &[997])).unwrap_err().contains("Uid"));
        let fs_root = STATUS.replace("Gid:\t997\t997\t997\t997", "Gid:\t997\t997\t997\t0");
        assert!(check_status(&fs_root, &identity(998, 997, &[997])).unwrap_err().contains("Gid"));
        let extra_group = STATUS.replace("Groups:\t997 ", "Groups:\t0 997");
        assert!(check_status(&extra_group, &identity(998, 997, &[997])).unwrap_err().contains("Groups"));
        let three_fields = STATUS.replace("Uid:\t998\t998\t998\t998", "Uid:\t998\t998\t998");
        assert!(check_status(&three_fields, &identity(998, 997, &[997])).is_err());
        assert!(check_status("Name:\tx\n", &identity(998, 997, &[997])).unwrap_err().contains("no Uid: line"));
    }

    #[test]
    fn empty_groups_line_means_none() {
        let none = STATUS.replace("Groups:\t997 ", "Groups:\t");
        assert_eq!(check_status(&none, &identity(998, 997, &[])), Ok(()));
    }

    #[test]
    fn root_is_refused_only_with_a_file_and_neither_key() {
        let config = Config::default();
        assert!(root_refusal(0, &config, true).is_some_and(|m| m.contains("server.user")));
        assert_eq!(root_refusal(0, &config, false), None, "the embedded default runs as root");
        assert_eq!(root_refusal(1000, &config, true), None);
        let mut allowed = Config::default();
        allowed.server.allow_root = true;
        assert_eq!(root_refusal(0, &allowed, true), None);
        let mut dropping = Config::default();
        dropping.server.user = Some("ringpost".into());
        assert_eq!(root_refusal(0, &dropping, true), None);
    }

    #[test]
    fn root_is_found_with_its_groups() {
        let root = lookup("root").expect("root is in every passwd");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0), "the primary group is among the groups");
        assert!(lookup("no-such-user-for-ringpost").unwrap_err().contains("no such user"));
        assert!(lookup("bad\0name").is_err());
    }

    #[test]
    fn pipes_with_other_ids_go_to_the_helper_list() {
        let target = lookup("root").expect("root");
        let load = |text: &str| crate::config::load_str(Path::new("t.toml"), text, &[]).expect("loads");
        let unset = load("[[transport]]\ndomains = [\"t.example\"]\ntransport = \"pipe\"\ncommand = [\"/bin/cat\"]\n");
        assert_eq!(helper_entries(&unset, &target), Ok(vec![]));
        let same = load(
            "[[transport]]\ndomains = [\"t.example\"]\ntransport = \"pipe\"\ncommand = [\"/bin/cat\"]\nuser = \"root\"\n",
        );
        assert_eq!(helper_entries(&same, &target), Ok(vec![]));
        let other = load(
            "[[transport]]\ndomains = [\"t.example\"]\ntransport = \"pipe\"\ncommand = [\"/bin/cat\", \"{user}\"]\n\
             user = \"nobody\"\n",
        );
        let nobody = lookup("nobody").expect("nobody");
        let entries = helper_entries(&other, &target).expect("resolves");
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].kind, entries[0].uid, entries[0].gid), (Kind::Transport, nobody.uid, nobody.gid));
        assert_eq!(entries[0].argv, vec!["/bin/cat".to_string(), "{user}".to_string()]);
        assert_eq!(entries[0].groups, nobody.groups);
        assert_eq!(check_pipes(&other, &target), Ok(()));
        let group = load("[[scanner]]\nname = \"p\"\nkind = \"pipe\"\ncommand = [\"/bin/cat\"]\ngroup = \"nogroup\"\n");
        let entries = helper_entries(&group, &target).expect("resolves");
        assert_eq!((entries[0].kind, entries[0].uid), (Kind::Scanner, 0));
        assert!(entries[0].groups.contains(&entries[0].gid) && entries[0].groups.contains(&0));
        let unknown = load(
            "[[scanner]]\nname = \"p\"\nkind = \"pipe\"\ncommand = [\"/bin/cat\"]\nuser = \"no-such-user-here\"\n",
        );
        assert!(check_pipes(&unknown, &target).unwrap_err().contains("[[scanner]] \"p\""));
    }

    #[test]
    fn spool_tree_is_walked_without_following_links() {
        let dir = crate::testing::tempdir("privdrop-tree");
        std::fs::create_dir_all(dir.join("shard-0")).expect("mkdir");
        std::fs::write(dir.join("shard-0/head-1.seg"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc", dir.join("shard-0/elsewhere")).expect("symlink");
        // SAFETY: these calls only read the process's ids.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let me = identity(uid, gid, &[]);
        assert_eq!(give_tree(&dir, &me, SPOOL_DEPTH_MAX), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
