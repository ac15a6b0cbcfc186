//! Message files as bytes, for messages from other machines: one read as it is (to publish
//! it), and arrivals written into `inbox/` byte for byte (temporary files marked with their
//! machine, flushed, renamed, one folder flush, the mailbox's file mode).

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

/// One message from another machine, to be written into `inbox/` as `<id>.md`.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub id: &'a str,
    /// The machine it came from, kept on the file ([`ORIGIN_ATTR`]).
    pub machine: &'a str,
    pub bytes: &'a [u8],
}

/// The extended attribute that names the machine an arrived file came from. Set before the
/// file's flush, it is on the disk whenever the file is, which lets the note of the arrival
/// in the bridge's log go unflushed: after a crash of the machine, a file that the log does
/// not know is still known as another machine's.
pub const ORIGIN_ATTR: &std::ffi::CStr = c"user.t9-ipc.machine";

/// At most this many threads flush one batch of arrivals (the file system takes their
/// flushes in fewer journal commits than one thread would).
const FLUSH_THREADS: usize = 4;

/// Writes `arrivals` into `inbox/` the atomic way, in their order: each as a temporary file
/// (0600, a dot name that readers skip) marked with its machine ([`ORIGIN_ATTR`]), all
/// flushed; then `note(flush)`, where the caller notes the arrivals on disk, flushed when
/// `flush` is true (a file system that keeps no extended attributes); the renames; the
/// folder flushed once. An existing `<id>.md` is left as it is (the first writer's bytes
/// stay). The answer says, for each arrival, whether this call put its file there.
pub fn write_arrivals(
    inbox: &Path,
    arrivals: &[Arrival<'_>],
    note: impl FnOnce(bool) -> Result<()>,
) -> Result<Vec<bool>> {
    let mut temps = Vec::with_capacity(arrivals.len());
    let result = (|| {
        let mut marked = true;
        let mut files = Vec::with_capacity(arrivals.len());
        for arrival in arrivals {
            let tmp = inbox.join(format!(".arriving.{}.tmp", random_uid()));
            let file = crate::fsx::write_new(&tmp, arrival.bytes).inspect_err(|_| {
                // Made, then not written whole (a full disk): not left behind.
                let _ = fs::remove_file(&tmp);
            })?;
            marked &= mark_origin(&file, arrival.machine);
            files.push((file, tmp.clone()));
            temps.push(tmp);
        }
        flush_all(&files)?;
        // Closed before the renames: a reader takes no file a writer still holds open (it
        // waits for the close), so a file renamed while held would be pushed only after the
        // folder's flush below.
        drop(files);
        note(!marked)?;
        let mut renamed = Vec::with_capacity(arrivals.len());
        for (arrival, tmp) in arrivals.iter().zip(&temps) {
            let path = inbox.join(format!("{}.md", arrival.id));
            // A rename, so that watchers see the file arrive whole (a link shows only as a
            // create); one that never replaces a file already there.
            renamed.push(rename_no_replace(tmp, &path).map_err(Error::io("renaming", tmp))?);
        }
        Ok(renamed)
    })();
    for tmp in &temps {
        let _ = fs::remove_file(tmp);
    }
    let renamed = result?;
    sync_dir(inbox)?;
    Ok(renamed)
}

/// The machine an arrived `inbox/<id>.md` came from, as its [`ORIGIN_ATTR`] says; `None` for
/// a file without one (written on this machine) or where the file system keeps none.
#[cfg(target_os = "linux")]
pub fn arrived_from(inbox: &Path, id: &str) -> Option<String> {
    let path = inbox.join(format!("{id}.md"));
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut buf = [0u8; 128];
    // SAFETY: two valid C strings and a buffer of the length given; the call writes at most
    // that many bytes into it. No link is followed (`lgetxattr`).
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            ORIGIN_ATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// Elsewhere extended attributes are not used: the note in the log is flushed instead.
#[cfg(not(target_os = "linux"))]
pub fn arrived_from(_inbox: &Path, _id: &str) -> Option<String> {
    None
}

#[cfg(not(target_os = "linux"))]
fn mark_origin(_file: &fs::File, _machine: &str) -> bool {
    false
}

/// Marks `file` with the machine it came from; false where the file system keeps no
/// extended attributes (or refuses this one).
#[cfg(target_os = "linux")]
fn mark_origin(file: &fs::File, machine: &str) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: an open descriptor, a valid C string and a buffer of the length given, which
    // the call only reads.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            ORIGIN_ATTR.as_ptr(),
            machine.as_ptr().cast(),
            machine.len(),
            0,
        )
    };
    rc == 0
}

/// Flushes every file of `temps`: on this thread when there is one, else on up to
/// [`FLUSH_THREADS`] threads at once.
fn flush_all(temps: &[(fs::File, std::path::PathBuf)]) -> Result<()> {
    let flush = |part: &[(fs::File, std::path::PathBuf)]| {
        part.iter()
            .try_for_each(|(file, path)| file.sync_all().map_err(Error::io("flushing", path)))
    };
    if temps.len() <= 1 {
        return flush(temps);
    }
    let per_thread = temps.len().div_ceil(FLUSH_THREADS);
    std::thread::scope(|scope| {
        let threads: Vec<_> = temps
            .chunks(per_thread)
            .map(|part| scope.spawn(move || flush(part)))
            .collect();
        threads.into_iter().try_for_each(|t| {
            t.join().unwrap_or_else(|_| {
                Err(Error::Refused(
                    "flushing arrivals: a thread panicked".into(),
                ))
            })
        })
    })
}

/// Renames `from` to `to` unless `to` exists (then `from` stays and this is no error):
/// whether it renamed.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<bool> {
    match crate::fsx::renameat2(from, to, crate::fsx::Rename::NoReplace)? {
        crate::fsx::Renamed::Done => Ok(true),
        crate::fsx::Renamed::NotDone => Ok(false),
        crate::fsx::Renamed::Unsupported => {
            if fs::symlink_metadata(to).is_ok() {
                return Ok(false);
            }
            fs::rename(from, to).map(|()| true)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn arrival<'a>(id: &'a str, bytes: &'a [u8]) -> Arrival<'a> {
        Arrival {
            id,
            machine: "laptop",
            bytes,
        }
    }

    #[test]
    fn arrivals_are_written_whole_private_marked_and_never_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        let mut flushed = None;
        let written = write_arrivals(inbox, &[arrival("id-1", b"first")], |flush| {
            flushed = Some(flush);
            Ok(())
        })
        .unwrap();
        assert_eq!(written, [true]);
        assert_eq!(fs::read(inbox.join("id-1.md")).unwrap(), b"first");
        let mode = fs::metadata(inbox.join("id-1.md"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        // The note is flushed exactly when the file could not carry its machine.
        let marked = arrived_from(inbox, "id-1");
        assert_eq!(flushed, Some(marked.is_none()));
        assert!(marked.is_none_or(|m| m == "laptop"));

        // A batch: in order, the one already there left as it is.
        let batch = [
            arrival("id-0", b"zero"),
            arrival("id-1", b"second"),
            arrival("id-2", b"two"),
        ];
        assert_eq!(
            write_arrivals(inbox, &batch, |_| Ok(())).unwrap(),
            [true, false, true]
        );
        assert_eq!(fs::read(inbox.join("id-1.md")).unwrap(), b"first");
        assert_eq!(fs::read(inbox.join("id-2.md")).unwrap(), b"two");
        // No temporary file is left behind.
        let mut names: Vec<_> = fs::read_dir(inbox)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["id-0.md", "id-1.md", "id-2.md"]);
        assert_eq!(read_bytes(inbox, "id-1").unwrap().unwrap(), b"first");
        assert_eq!(read_bytes(inbox, "gone").unwrap(), None);
        // A file written here carries no machine.
        fs::write(inbox.join("local.md"), "x").unwrap();
        assert_eq!(arrived_from(inbox, "local"), None);
    }

    #[test]
    fn arrivals_are_closed_before_they_are_renamed() {
        // A reader takes no file a writer still holds open: one renamed while held would
        // wait for its close, after the folder's flush.
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        let batch = [arrival("id-1", b"one"), arrival("id-2", b"two")];
        let mut looked = 0;
        let written = write_arrivals(inbox, &batch, |_| {
            for entry in fs::read_dir(inbox).unwrap() {
                let file = fs::File::open(entry.unwrap().path()).unwrap();
                assert!(!super::super::read::open_for_writing(&file), "held open");
                looked += 1;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!((written, looked), (vec![true, true], 2));
    }

    #[test]
    fn arrivals_whose_note_fails_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let batch = [arrival("id-1", b"x"), arrival("id-2", b"y")];
        let err = write_arrivals(dir.path(), &batch, |_| {
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
