//! Message files as bytes, for messages from other machines: one read as it is (to publish
//! it), and an arrival written into `inbox/` byte for byte (temporary file, flush, rename,
//! folder flush, the mailbox's file mode).

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::MAX_FILE_BYTES;
use crate::error::{Error, Result};
use crate::fsx::{random_uid, sync_dir};

/// The bytes of `inbox/<id>.md`: only a regular file (no link followed, no FIFO opened
/// blocking), at most [`MAX_FILE_BYTES`]. `None` when it is gone.
pub fn read_bytes(inbox: &Path, id: &str) -> Result<Option<Vec<u8>>> {
    let path = inbox.join(format!("{id}.md"));
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("opening", &path)(e)),
    };
    let meta = file.metadata().map_err(Error::io("reading", &path))?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return Err(Error::Refused(format!(
            "{} is no regular file of at most {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::io("reading", &path))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::Refused(format!(
            "{} grew past {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(Some(bytes))
}

/// Writes `bytes` as `inbox/<id>.md` the atomic way: a temporary file (0600, a dot name
/// that readers skip), flushed; then `before_rename` (the caller notes the arrival on disk);
/// the rename; the folder flushed. An existing `<id>.md` is left as it is (the first
/// writer's bytes stay) and counts as written: the answer is false then, true when this call
/// put the file there.
pub fn write_arrival(
    inbox: &Path,
    id: &str,
    bytes: &[u8],
    before_rename: impl FnOnce() -> Result<()>,
) -> Result<bool> {
    let path = inbox.join(format!("{id}.md"));
    let tmp = inbox.join(format!(".arriving.{}.tmp", random_uid()));
    let result = (|| {
        crate::fsx::write_new_synced(&tmp, bytes)?;
        before_rename()?;
        // A rename, so that watchers see the file arrive whole (a link shows only as a
        // create); one that never replaces a file already there.
        rename_no_replace(&tmp, &path).map_err(Error::io("renaming", &tmp))
    })();
    let _ = fs::remove_file(&tmp);
    let renamed = result?;
    sync_dir(inbox)?;
    Ok(renamed)
}

/// Renames `from` to `to` unless `to` exists (then `from` stays and this is no error):
/// whether it renamed.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)
        };
        let (cfrom, cto) = (c(from)?, c(to)?);
        // SAFETY: two valid C strings; the call reads them and nothing else.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cfrom.as_ptr(),
                libc::AT_FDCWD,
                cto.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EEXIST) => return Ok(false),
            // A file system without RENAME_NOREPLACE: fall back below.
            Some(libc::EINVAL | libc::ENOSYS) => {}
            _ => return Err(err),
        }
    }
    if fs::symlink_metadata(to).is_ok() {
        return Ok(false);
    }
    fs::rename(from, to).map(|()| true)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn an_arrival_is_written_whole_private_and_never_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        let mut noted = false;
        let written = write_arrival(inbox, "id-1", b"first", || {
            noted = true;
            Ok(())
        })
        .unwrap();
        assert!(noted && written);
        assert_eq!(fs::read(inbox.join("id-1.md")).unwrap(), b"first");
        assert_eq!(
            fs::metadata(inbox.join("id-1.md"))
                .unwrap()
                .permissions()
                .mode()
                & 0o077,
            0
        );
        assert!(!write_arrival(inbox, "id-1", b"second", || Ok(())).unwrap());
        assert_eq!(fs::read(inbox.join("id-1.md")).unwrap(), b"first");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(inbox)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["id-1.md"]);
        assert_eq!(read_bytes(inbox, "id-1").unwrap().unwrap(), b"first");
        assert_eq!(read_bytes(inbox, "gone").unwrap(), None);
    }

    #[test]
    fn an_arrival_whose_note_fails_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_arrival(dir.path(), "id-1", b"x", || {
            Err(Error::Refused("disk full".into()))
        });
        assert!(err.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_link_or_fifo_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("target"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), dir.path().join("link.md")).unwrap();
        assert!(read_bytes(dir.path(), "link").is_err());
        let fifo = dir.path().join("fifo.md");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string and mode.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_bytes(dir.path(), "fifo").is_err());
    }
}
