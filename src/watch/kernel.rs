//! The Linux backend of [`super::Watcher`]: inotify with a narrow mask, read on a thread of
//! its own.
//!
//! A folder of files is asked for creations, closes after writing, renames in and out and
//! removals; a folder above only for what can make or take a folder. Left out are opens,
//! writes in progress and attribute changes: a message written the atomic way costs four
//! events (its temporary file made, closed, renamed out; the message renamed in) instead of
//! seven or more, in every server that watches the mailbox.
//!
//! The thread waits in `poll(2)` on the inotify descriptor and on a socket whose other end
//! the [`Kernel`] holds: dropping the `Kernel` closes that end, and the thread ends.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

use super::{Seen, Sink};

/// The watched folders by their watch descriptors.
type Folders = Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>;

pub(super) struct Kernel {
    watches: Watches,
    folders: Folders,
    /// Closed on drop: that ends the thread.
    _stop: UnixStream,
}

impl Kernel {
    pub(super) fn start(sink: Sink) -> io::Result<Kernel> {
        let inotify = Inotify::init()?;
        let watches = inotify.watches();
        let folders = Folders::default();
        let (stop, stopped) = UnixStream::pair()?;
        let seen = folders.clone();
        std::thread::Builder::new()
            .name("t9-ipc-watch".to_owned())
            .spawn(move || read_events(inotify, &stopped, &seen, &sink))?;
        Ok(Kernel {
            watches,
            folders,
            _stop: stop,
        })
    }

    /// Watches `folder`: for its files when `files`, else only for folders coming and going.
    /// A folder watched again (made anew) gets a new descriptor; the old one's events stop
    /// with the old folder.
    pub(super) fn add(&mut self, folder: &Path, files: bool) -> io::Result<()> {
        let comes_and_goes = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR;
        let mask = if files {
            comes_and_goes | WatchMask::CLOSE_WRITE
        } else {
            comes_and_goes
        };
        let wd = self.watches.add(folder, mask)?;
        locked(&self.folders).insert(wd, folder.to_path_buf());
        Ok(())
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The thread: waits for events (or for the stop), and hands each to `sink`.
fn read_events(mut inotify: Inotify, stop: &UnixStream, folders: &Folders, sink: &Sink) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd structs, both descriptors open for the whole call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(%err, "file watcher error; rescanning, and no more events");
            sink.rescan();
            return;
        }
        if fds[1].revents != 0 {
            return; // the watcher was dropped
        }
        let events = match inotify.read_events(&mut buffer) {
            Ok(events) => events,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => {
                tracing::warn!(%err, "file watcher error; rescanning");
                sink.rescan();
                continue;
            }
        };
        for event in events {
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                sink.rescan();
                continue;
            }
            let Some(folder) = locked(folders).get(&event.wd).cloned() else {
                continue;
            };
            let path = match event.name {
                Some(name) => folder.join(name),
                None => folder, // the watched folder itself
            };
            sink.note(seen(event.mask), &[path]);
        }
    }
}

/// What an event's mask says.
fn seen(mask: EventMask) -> Seen {
    if mask.intersects(EventMask::CLOSE_WRITE) {
        Seen::Settled
    } else if mask.intersects(
        EventMask::MOVED_FROM
            | EventMask::MOVED_TO
            | EventMask::DELETE
            | EventMask::DELETE_SELF
            | EventMask::MOVE_SELF
            | EventMask::UNMOUNT,
    ) {
        Seen::Moved
    } else if mask.contains(EventMask::CREATE) {
        Seen::Created
    } else {
        Seen::Other // IGNORED: a watch removed, after its folder's own event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_kind_reads_as_what_it_does_to_a_file() {
        assert_eq!(seen(EventMask::CLOSE_WRITE), Seen::Settled);
        assert_eq!(seen(EventMask::MOVED_TO), Seen::Moved);
        assert_eq!(seen(EventMask::DELETE | EventMask::ISDIR), Seen::Moved);
        assert_eq!(seen(EventMask::DELETE_SELF), Seen::Moved);
        assert_eq!(seen(EventMask::CREATE), Seen::Created);
        assert_eq!(seen(EventMask::IGNORED), Seen::Other);
    }
}
