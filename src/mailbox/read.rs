//! Reading one message file without ever blocking on it, following a link, reading too much or
//! reading a file still being written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{MAX_FILE_BYTES, Message};
use crate::message;

/// Why a file was not read as a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Skip {
    /// It is no message; the reason is for a warning.
    Bad(String),
    /// It went away before it was read (archived or deleted meanwhile): nothing to say.
    Gone,
    /// A process has it open for writing: it is read when its writer closes it.
    Writing,
}

impl Skip {
    /// Says why `path` was not read: a warning for a file that is no message, a debug line
    /// for one that is gone or still being written.
    pub(super) fn log(&self, path: &Path) {
        match self {
            Skip::Bad(reason) => {
                tracing::warn!(file = %path.display(), %reason, "skipped a message file");
            }
            skip => {
                tracing::debug!(file = %path.display(), reason = %skip.reason(), "not read now");
            }
        }
    }

    pub(super) fn reason(&self) -> String {
        match self {
            Skip::Bad(reason) => reason.clone(),
            Skip::Gone => "it is gone".to_owned(),
            Skip::Writing => "it is still being written".to_owned(),
        }
    }
}

/// Reads a message file after checking what kind of file it is; `Err` says why it is no
/// message. `meta` must not follow symbolic links.
pub(super) fn read_checked(
    path: &Path,
    meta: &fs::Metadata,
    id: &str,
) -> std::result::Result<Message, Skip> {
    if meta.file_type().is_symlink() {
        Err(Skip::Bad("a symbolic link".to_owned()))
    } else if !meta.is_file() {
        Err(Skip::Bad("not a regular file".to_owned()))
    } else if meta.len() > MAX_FILE_BYTES {
        Err(Skip::Bad(format!("larger than {MAX_FILE_BYTES} bytes")))
    } else {
        read_message(path, id)
    }
}

/// A `stat` that failed: quiet when the file is gone (archived or deleted after the listing).
pub(super) fn stat_failed(name: &str, err: &io::Error) {
    if err.kind() == io::ErrorKind::NotFound {
        tracing::debug!(file = %name, "not read now: it is gone");
    } else {
        tracing::warn!(file = %name, %err, "skipped: cannot stat");
    }
}

/// Reads the file of a folder entry as message `id` ([`read_checked`] on its own `lstat`).
pub(super) fn read_entry(entry: &fs::DirEntry, id: &str) -> std::result::Result<Message, Skip> {
    // DirEntry::metadata does not follow symbolic links.
    let meta = entry.metadata().map_err(stat_skip)?;
    read_checked(&entry.path(), &meta, id)
}

fn stat_skip(err: io::Error) -> Skip {
    if err.kind() == io::ErrorKind::NotFound {
        Skip::Gone
    } else {
        Skip::Bad(format!("cannot stat: {err}"))
    }
}

/// Reads one message file. What the caller checked may have changed since (the file was
/// replaced, grew, or is being written), so the open file is checked again: the open never
/// blocks (a FIFO) nor follows a link, only a regular file is read, never more than
/// [`MAX_FILE_BYTES`], and not while a process has it open for writing.
fn read_message(path: &Path, id: &str) -> std::result::Result<Message, Skip> {
    read_message_bytes(path, id).map(|(msg, _)| msg)
}

/// [`read_message`], with the file's bytes as they were read.
fn read_message_bytes(path: &Path, id: &str) -> std::result::Result<(Message, Vec<u8>), Skip> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => Skip::Gone,
            Some(libc::ELOOP) => Skip::Bad("a symbolic link".to_owned()),
            _ => Skip::Bad(format!("cannot read: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| Skip::Bad(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(Skip::Bad("not a regular file".to_owned()));
    }
    let too_large = || Skip::Bad(format!("larger than {MAX_FILE_BYTES} bytes"));
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    if open_for_writing(&file) && !closes_in_a_moment(&file) {
        return Err(Skip::Writing);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Skip::Bad(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| Skip::Bad("not UTF-8 text".to_owned()))?;
    let (front, body) = message::parse(text).map_err(|e| Skip::Bad(e.to_string()))?;
    let msg = Message {
        id: id.to_owned(),
        front,
        body,
    };
    Ok((msg, bytes))
}

impl super::Mailbox {
    /// The bytes of `inbox/<id>.md` when it is a good message, read once with every check
    /// [`super::Mailbox::get`] makes (no link, no file still being written, a size within
    /// [`MAX_FILE_BYTES`], front matter that parses): what the federation's bridge signs
    /// and publishes as it is. `None` when it is gone, still being written, or no message
    /// (warned about).
    pub fn message_bytes(&self, id: &str) -> Option<Vec<u8>> {
        let path = self.inbox.join(super::file_name(id)?);
        read_message_bytes(&path, id)
            .map(|(_, bytes)| bytes)
            .inspect_err(|skip| skip.log(&path))
            .ok()
    }
}

/// Waits a few milliseconds for a writer to be done with `file`. The kernel announces a
/// writer's close (the event that brings a reader here) a moment before it stops counting
/// the file as open for writing; a reader woken by that event can look in between, and no
/// other event would bring it back. A flood of 20,000 files written in place lost about one
/// in 10,000 that way until this second look. Blocks: callers run on blocking threads.
fn closes_in_a_moment(file: &File) -> bool {
    [200, 1_000, 3_000].into_iter().any(|micros| {
        std::thread::sleep(std::time::Duration::from_micros(micros));
        !open_for_writing(file)
    })
}

/// True when some process has `file` open for writing: a writer that writes a message in
/// place has not finished it yet. Linux tells by refusing a read lease (`F_SETLEASE`) then;
/// the lease, when granted, is dropped at once. Where leases are unsupported or not allowed
/// (a file of another user, NFS), and on other systems, the answer is false: the file is read.
#[cfg(target_os = "linux")]
pub(super) fn open_for_writing(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    /// `F_SETSIG` from `<fcntl.h>` (the same on every Linux architecture); libc lacks it.
    const F_SETSIG: libc::c_int = 10;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a file descriptor this function borrows open; no memory is passed.
    unsafe {
        // A writer opening the file while the lease is held breaks it with a signal to this
        // process: SIGURG, ignored by default, not SIGIO, whose default ends the process.
        if libc::fcntl(fd, F_SETSIG, libc::SIGURG) == -1 {
            return false;
        }
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0 {
            libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
            return false;
        }
    }
    io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn open_for_writing(_file: &File) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    const GOOD: &str = "---\nfrom: alpha\nto: beta\nsubject: s\n---\n\nbody\n";

    /// `read_message` on `path` in a thread: it must answer within the time, never hang.
    fn read_in_time(path: &Path) -> std::result::Result<Message, Skip> {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(read_message(&path, "x"));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("read_message returned in time")
    }

    // The callers look at the file first (lstat); these show what happens when the file
    // changed after that look.

    #[test]
    fn a_fifo_is_never_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.md");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; mkfifo reads it only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            read_in_time(&fifo),
            Err(Skip::Bad("not a regular file".to_owned()))
        );
    }

    #[test]
    fn links_are_not_followed_not_even_in_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, good) = (
            dir.path().join("a.md"),
            dir.path().join("b.md"),
            dir.path().join("good.md"),
        );
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        fs::write(&good, GOOD).unwrap();
        let c = dir.path().join("c.md");
        std::os::unix::fs::symlink(&good, &c).unwrap();
        for link in [a, c] {
            assert_eq!(
                read_in_time(&link),
                Err(Skip::Bad("a symbolic link".to_owned()))
            );
        }
    }

    #[test]
    fn a_file_gone_or_grown_or_being_written_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.md");
        assert_eq!(read_in_time(&path), Err(Skip::Gone));
        let mut big = GOOD.as_bytes().to_vec();
        big.resize(MAX_FILE_BYTES as usize + 1, b'x');
        fs::write(&path, &big).unwrap();
        assert!(matches!(read_in_time(&path), Err(Skip::Bad(r)) if r.starts_with("larger")));
        let mut writer = File::create(&path).unwrap();
        writer.write_all(GOOD.as_bytes()).unwrap();
        // Another process could hold it; this one does here. A lease is refused either way.
        let expected = if cfg!(target_os = "linux") {
            Err(Skip::Writing)
        } else {
            read_message(&path, "x")
        };
        assert_eq!(read_in_time(&path), expected);
        drop(writer);
        assert_eq!(read_in_time(&path).unwrap().body, "body");
    }

    #[test]
    fn a_message_is_read_once_for_its_bytes_and_only_when_it_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let mb = super::super::Mailbox::open(dir.path()).unwrap();
        let good = mb.inbox().join("good.md");
        // Bytes a parse would not give back as they were: a CRLF line, a trailing space.
        let text = "---\r\nfrom: alpha\nto: beta\nsubject: s \n---\n\nbody\n";
        fs::write(&good, text).unwrap();
        assert_eq!(mb.message_bytes("good").unwrap(), text.as_bytes());
        fs::write(mb.inbox().join("bad.md"), "no front matter").unwrap();
        assert_eq!(mb.message_bytes("bad"), None);
        assert_eq!(mb.message_bytes("gone"), None);
        let mut writer = File::create(mb.inbox().join("open.md")).unwrap();
        writer.write_all(GOOD.as_bytes()).unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(mb.message_bytes("open"), None, "still being written");
        }
    }

    /// The race a close event starts: the writer's close is announced before the kernel
    /// stops counting the file as open for writing. A writer that closes while the reader
    /// looks is waited for; one that keeps the file open is not.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_writer_closing_during_the_look_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.md");
        let mut writer = File::create(&path).unwrap();
        writer.write_all(GOOD.as_bytes()).unwrap();
        let reader = Arc::new(File::open(&path).unwrap());
        assert!(open_for_writing(&reader));
        assert!(!closes_in_a_moment(&reader), "kept open: still written");
        let looking = {
            let reader = reader.clone();
            std::thread::spawn(move || closes_in_a_moment(&reader))
        };
        drop(writer);
        assert!(looking.join().unwrap(), "closed a moment later: read");
    }
}
