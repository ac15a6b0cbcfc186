//! File-system helpers every writer shares: the one atomic, durable, private file write, the
//! modes of private files and folders, and the one bounded file lock.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions, TryLockError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// How long a file lock another process holds is waited for before the caller gets an error:
/// short enough that a tool call whose lock is held still answers within 2 s.
pub const LOCK_WAIT: Duration = Duration::from_millis(1500);

/// `IPC_SHARE_GROUP`: folders 0770 and files 0660 instead of 0700 and 0600. Set once at
/// start by the binary ([`share_with_group`]); off unless the user asked for it.
static SHARE_GROUP: AtomicBool = AtomicBool::new(false);

/// Opens the mailbox to the members of its group (`IPC_SHARE_GROUP=1`): every folder made
/// from now on is 0770 and every file 0660. Called once, at start.
pub fn share_with_group(on: bool) {
    SHARE_GROUP.store(on, Ordering::Relaxed);
}

/// True when [`share_with_group`] turned group access on.
pub fn shared_with_group() -> bool {
    SHARE_GROUP.load(Ordering::Relaxed)
}

/// The mode of every folder in the mailbox: 0700 (0770 when shared with the group).
pub fn dir_mode() -> u32 {
    if shared_with_group() { 0o770 } else { 0o700 }
}

/// The mode of every file in the mailbox: 0600 (0660 when shared with the group).
pub fn file_mode() -> u32 {
    if shared_with_group() { 0o660 } else { 0o600 }
}

/// `OpenOptions` that create a file with [`file_mode`] (the umask may take bits away; see
/// [`fix_mode`]).
pub fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(file_mode());
    options
}

/// Gives a file just created the group bits a umask took away, when the mailbox is shared
/// with the group; nothing otherwise (a umask never adds bits to 0600).
pub fn fix_mode(file: &File, path: &Path) -> Result<()> {
    if !shared_with_group() {
        return Ok(());
    }
    file.set_permissions(Permissions::from_mode(file_mode()))
        .map_err(Error::io("securing", path))
}

/// Makes `dir` (and missing parents) with [`dir_mode`], whatever the umask. A folder that
/// exists already is left as it is: a server tightens the mailbox at start
/// ([`crate::mailbox::tighten`]) with a warning, and `doctor` reports it; nothing changes
/// modes silently.
pub fn private_dir(dir: &Path) -> Result<()> {
    make_private_dir(dir, true)
}

/// [`private_dir`] for a folder inside one that must exist: fails (not found) when its
/// parent is missing, so that a folder of a mailbox is made again inside that mailbox only,
/// never with a new mailbox around it.
pub fn private_subdir(dir: &Path) -> Result<()> {
    make_private_dir(dir, false)
}

fn make_private_dir(dir: &Path, parents: bool) -> Result<()> {
    if fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    match DirBuilder::new()
        .recursive(parents)
        .mode(dir_mode())
        .create(dir)
    {
        // Made by another process meanwhile: left as it is, like one found.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        made => made.map_err(Error::io("creating", dir)).and_then(|()| {
            fs::set_permissions(dir, Permissions::from_mode(dir_mode()))
                .map_err(Error::io("securing", dir))
        }),
    }
}

/// An exclusive `flock` on a lock file, released when dropped.
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Opens (creating it private, [`file_mode`]) the lock file `path` and takes its lock
    /// with [`lock_within`].
    pub fn take(path: &Path, wait: Duration) -> Result<FileLock> {
        let file = private_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(Error::io("opening", path))?;
        fix_mode(&file, path)?;
        lock_within(&file, path, wait)?;
        Ok(FileLock { file })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; this makes the order plain.
        let _ = self.file.unlock();
    }
}

/// Takes the exclusive lock of `file` (opened from `path`); after `wait` gives up with
/// [`Error::LockBusy`], naming the file and, when `/proc/locks` shows it, the pid of the
/// holder. Never waits on another process longer.
///
/// Waiting is a blocking `flock` on a helper thread (so waiters are woken the moment the
/// lock is free, in the kernel's order, with no polling): when the wait is over, the thread
/// is left behind and releases the lock at once should it still get it.
pub fn lock_within(file: &File, path: &Path, wait: Duration) -> Result<()> {
    match file.try_lock() {
        Ok(()) => return Ok(()),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(err)) => return Err(Error::io("locking", path)(err)),
    }
    // The same open file: a lock taken through it is this file's lock.
    let waiter = file.try_clone().map_err(Error::io("locking", path))?;
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("t9-ipc lock wait".to_owned())
        .spawn(move || {
            let locked = waiter.lock();
            if let Err(mpsc::SendError(Ok(()))) = tx.send(locked) {
                // Nobody waits any more: give the lock back.
                let _ = waiter.unlock();
            }
        });
    if let Err(err) = spawned {
        return Err(Error::io("locking", path)(err));
    }
    let outcome = match rx.recv_timeout(wait) {
        Err(mpsc::RecvTimeoutError::Timeout) => rx.try_recv().ok(),
        got => got.ok(),
    };
    drop(rx);
    match outcome {
        Some(Ok(())) => Ok(()),
        Some(Err(err)) => Err(Error::io("locking", path)(err)),
        None => Err(Error::LockBusy {
            path: path.to_path_buf(),
            holder: lock_holder(file),
            waited: wait,
        }),
    }
}

/// The pid that holds a `flock` on `file`, from `/proc/locks` (Linux), when it is listed.
fn lock_holder(file: &File) -> Option<u32> {
    let inode = file.metadata().ok()?.ino();
    let locks = fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, inode)
}

/// The pid of the first lock in a `/proc/locks` text on `inode` (not a waiter's `->` line).
/// Lines read `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF`.
fn holder_in(locks: &str, inode: u64) -> Option<u32> {
    locks
        .lines()
        .filter(|line| !line.contains("->"))
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let file = fields.get(5)?;
            let ino = file.rsplit(':').next()?.parse::<u64>().ok()?;
            (ino == inode).then(|| fields.get(4)?.parse().ok())?
        })
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never half of
/// one, and a crash after it returns loses nothing: a temporary file beside `path` (named
/// `<path without extension>.tmp.<uid>`, created private ([`file_mode`]), never an existing file), written,
/// flushed to disk, renamed over `path`, then the folder flushed. On failure the temporary
/// file is removed and `path` is unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_beside(path);
    let written = write_new_synced(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path).map_err(Error::io("renaming", &tmp)));
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Like [`write_atomic`] (a reader sees the old file or the new one, never half of one) but
/// without flushing to disk: for files that mean nothing after a crash of the machine, such
/// as `heartbeats.json` (every session it lists died with the machine, and a reader takes
/// an empty or damaged file for an empty table). Writers hold a lock while they write it, so
/// two `fsync`s there would make every other session wait for the disk.
///
/// An existing file is swapped with the new one (`RENAME_EXCHANGE`) and then removed, rather
/// than renamed over: ext4 starts writing a file renamed over another out to disk at once
/// (its guard for files replaced that way), which took about a quarter of a millisecond of
/// every session's start; swapped, it is written out with everything else.
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_beside(path);
    // A folder in the way is refused by the rename, as by `write_atomic`; never swapped.
    let swap = fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir());
    let written = write_new(&tmp, bytes).and_then(|_| {
        let how = if swap {
            Rename::Exchange
        } else {
            Rename::NoReplace
        };
        match renameat2(&tmp, path, how).map(|r| (how, r)) {
            // Swapped: `tmp` now holds the old file. Or the first file there.
            Ok((_, Renamed::Done)) => Ok(()),
            // Nothing to swap with after all, a file or folder came meanwhile, or no such
            // rename here.
            Ok((_, Renamed::NotDone | Renamed::Unsupported)) => {
                fs::rename(&tmp, path).map_err(Error::io("renaming", &tmp))
            }
            Err(err) => Err(Error::io("renaming", &tmp)(err)),
        }
    });
    let _ = fs::remove_file(&tmp);
    written
}

/// How [`renameat2`] treats a file already at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rename {
    /// Leave it: the rename does not happen.
    NoReplace,
    /// Swap the two files.
    Exchange,
}

/// What [`renameat2`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renamed {
    /// Renamed (or swapped).
    Done,
    /// Not renamed: for [`Rename::NoReplace`], a file is at the destination; for
    /// [`Rename::Exchange`], none is.
    NotDone,
    /// This system or file system has no such rename; the caller falls back.
    Unsupported,
}

/// `renameat2(2)` with `how`.
pub fn renameat2(from: &Path, to: &Path, how: Rename) -> std::io::Result<Renamed> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)
        };
        let (cfrom, cto) = (c(from)?, c(to)?);
        let flags = match how {
            Rename::NoReplace => libc::RENAME_NOREPLACE,
            Rename::Exchange => libc::RENAME_EXCHANGE,
        };
        // SAFETY: two valid C strings; the call reads them and nothing else.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cfrom.as_ptr(),
                libc::AT_FDCWD,
                cto.as_ptr(),
                flags,
            )
        };
        if rc == 0 {
            return Ok(Renamed::Done);
        }
        let err = std::io::Error::last_os_error();
        match (how, err.raw_os_error()) {
            (Rename::NoReplace, Some(libc::EEXIST)) | (Rename::Exchange, Some(libc::ENOENT)) => {
                Ok(Renamed::NotDone)
            }
            (_, Some(libc::EINVAL | libc::ENOSYS)) => Ok(Renamed::Unsupported),
            _ => Err(err),
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (from, to, how);
        Ok(Renamed::Unsupported)
    }
}

/// `<path without extension>.tmp.<uid>`: in the same folder (so the rename is atomic), and
/// never ending in `.md` (so no reader takes it for a message).
fn temp_beside(path: &Path) -> PathBuf {
    path.with_extension(format!("tmp.{}", random_uid()))
}

/// Creates `path` (which must not exist) with [`file_mode`], writes `bytes` and flushes them.
pub fn write_new_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let file = write_new(path, bytes)?;
    file.sync_all().map_err(Error::io("flushing", path))
}

/// Creates `path` (which must not exist) with [`file_mode`] and writes `bytes`.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<File> {
    let mut file = private_options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(Error::io("creating", path))?;
    fix_mode(&file, path)?;
    file.write_all(bytes).map_err(Error::io("writing", path))?;
    Ok(file)
}

/// Flushes a folder so that a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("flushing", dir))
}

/// Eight random lowercase hex digits.
pub fn random_uid() -> String {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        // No system randomness: the time's nanoseconds and the pid still make a fresh uid,
        // and writers check that the name is unused.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        bytes = (nanos ^ std::process::id().rotate_left(16)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    type Write = fn(&Path, &[u8]) -> Result<()>;
    const WRITES: [(&str, Write); 2] = [
        ("write_atomic", write_atomic),
        ("write_atomic_unsynced", write_atomic_unsynced),
    ];

    #[test]
    fn writes_whole_private_files_and_leaves_no_temporary() {
        for (name, write) in WRITES {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.json");
            write(&path, b"one").unwrap();
            write(&path, b"two").unwrap();
            assert_eq!(fs::read(&path).unwrap(), b"two", "{name}");
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
            let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
            assert_eq!(names.len(), 1, "{name}: {names:?}");
        }
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        for (name, write) in WRITES {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.json");
            write(&path, b"old").unwrap();
            // A folder cannot be replaced by a file: the rename fails.
            let target = dir.path().join("sub");
            fs::create_dir(&target).unwrap();
            fs::write(target.join("keep"), b"k").unwrap();
            assert!(write(&target, b"new").is_err(), "{name}");
            assert_eq!(fs::read(&path).unwrap(), b"old", "{name}");
            assert_eq!(fs::read(target.join("keep")).unwrap(), b"k", "{name}");
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "{name}");
        }
    }

    #[test]
    fn a_held_lock_gives_up_in_time_naming_its_file_and_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = FileLock::take(&path, LOCK_WAIT).unwrap();
        let started = Instant::now();
        let err = FileLock::take(&path, Duration::from_millis(100))
            .err()
            .expect("the lock is held");
        assert!(started.elapsed() < Duration::from_secs(2));
        let text = err.to_string();
        assert!(text.contains("x.lock"), "{text}");
        // flock locks belong to the open file, so this process shows as the holder.
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(held);
        FileLock::take(&path, Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn holders_are_read_from_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 99 08:01:1234 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 77 00:2e:55 0 EOF\n";
        assert_eq!(holder_in(locks, 1234), Some(4242));
        assert_eq!(holder_in(locks, 55), Some(77));
        assert_eq!(holder_in(locks, 9), None);
    }

    #[test]
    fn temporaries_never_end_in_md() {
        let tmp = temp_beside(Path::new("/d/20260406T153000123456-0a1b2c3d-a-b-s.md"));
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("20260406T153000123456-0a1b2c3d-a-b-s.tmp."));
        assert!(!name.ends_with(".md"));
    }
}
