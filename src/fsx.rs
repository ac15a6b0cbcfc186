//! File-system helpers every writer shares: the one atomic, durable, private file write.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never half of
/// one, and a crash after it returns loses nothing: a temporary file beside `path` (named
/// `<path without extension>.tmp.<uid>`, created `0600`, never an existing file), written,
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

/// `<path without extension>.tmp.<uid>`: in the same folder (so the rename is atomic), and
/// never ending in `.md` (so no reader takes it for a message).
fn temp_beside(path: &Path) -> PathBuf {
    path.with_extension(format!("tmp.{}", random_uid()))
}

/// Creates `path` (which must not exist) with mode `0600`, writes `bytes` and flushes them.
fn write_new_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io("creating", path))?;
    file.write_all(bytes).map_err(Error::io("writing", path))?;
    file.sync_all().map_err(Error::io("flushing", path))
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
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_whole_private_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"old").unwrap();
        // A folder cannot be replaced by a file: the rename fails.
        let target = dir.path().join("sub");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"k").unwrap();
        assert!(write_atomic(&target, b"new").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn temporaries_never_end_in_md() {
        let tmp = temp_beside(Path::new("/d/20260406T153000123456-0a1b2c3d-a-b-s.md"));
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("20260406T153000123456-0a1b2c3d-a-b-s.tmp."));
        assert!(!name.ends_with(".md"));
    }
}
