//! The Linux backend of [`super::Watcher`]: inotify with a narrow mask.
//!
//! A folder of files is asked for creations, closes after writing, renames in and out and
//! removals; a folder above only for what can make or take a folder. Left out are opens,
//! writes in progress and attribute changes: a message written the atomic way costs four
//! events (its temporary file made, closed, renamed out; the message renamed in) instead of
//! seven or more, in every server that watches the mailbox.
//!
//! One inotify instance serves the whole process (the kernel allows a user 128 by default,
//! and a server that also runs the federation's bridge watches three folders), read by one
//! thread that lives as long as the process; each [`Kernel`] adds its folders to it and
//! takes its routes out when dropped. A second instance, read by a thread of lower
//! priority ([`lower_priority`]), serves the watches whose events are mostly others' mail:
//! a server's watch of its own `inbox/`, which lets those files wait.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

use super::{Seen, Sink};

/// Where the events of one watched folder go.
struct Route {
    id: u64,
    folder: PathBuf,
    sink: Sink,
}

/// The process's inotify instance: its watches, and the routes of each.
struct Shared {
    watches: Mutex<Watches>,
    routes: Mutex<HashMap<WatchDescriptor, Vec<Route>>>,
    next: AtomicU64,
}

/// Made on first use (and again after a failed start, e.g. the limit of instances reached):
/// the instance read at the process's priority, and the one read below it.
static SHARED: Mutex<Option<Arc<Shared>>> = Mutex::new(None);
static SHARED_LOW: Mutex<Option<Arc<Shared>>> = Mutex::new(None);

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The process's instance (read below the process's priority when `low`), started with
/// its reading thread when there is none.
fn shared(low: bool) -> io::Result<Arc<Shared>> {
    let mut slot = locked(if low { &SHARED_LOW } else { &SHARED });
    if let Some(shared) = &*slot {
        return Ok(shared.clone());
    }
    let inotify = Inotify::init()?;
    let blocking = set_blocking(&inotify);
    let shared = Arc::new(Shared {
        watches: Mutex::new(inotify.watches()),
        routes: Mutex::new(HashMap::new()),
        next: AtomicU64::new(0),
    });
    let reading = shared.clone();
    std::thread::Builder::new()
        .name(
            if low {
                "t9-ipc-watch-lo"
            } else {
                "t9-ipc-watch"
            }
            .to_owned(),
        )
        .spawn(move || {
            if low {
                lower_priority();
            }
            read_events(inotify, blocking, &reading);
        })?;
    *slot = Some(shared.clone());
    Ok(shared)
}

/// The folders one [`super::Watcher`] watches in the process's instance.
pub(super) struct Kernel {
    shared: Arc<Shared>,
    sink: Sink,
    /// Its routes, by the watch they hang on.
    mine: Vec<(WatchDescriptor, u64)>,
}

impl Kernel {
    /// With `low`, in the instance read below the process's priority.
    pub(super) fn start(sink: Sink, low: bool) -> io::Result<Kernel> {
        Ok(Kernel {
            shared: shared(low)?,
            sink,
            mine: Vec::new(),
        })
    }

    /// Watches `folder`: for its files when `files`, else only for folders coming and going.
    /// A folder watched again (made anew) gets a new descriptor; the old one's events stop
    /// with the old folder. Masks of one folder watched by several add up.
    pub(super) fn add(&mut self, folder: &Path, files: bool) -> io::Result<()> {
        let comes_and_goes = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR
            | WatchMask::MASK_ADD;
        let mask = if files {
            comes_and_goes | WatchMask::CLOSE_WRITE
        } else {
            comes_and_goes
        };
        // The routes' lock is taken first, and held while the watch is added: the reading
        // thread looks up an event's routes under it, so the first events of a new watch
        // (a folder made again, with its files made at once) find their route.
        let mut routes = locked(&self.shared.routes);
        let wd = locked(&self.shared.watches).add(folder, mask)?;
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        routes.entry(wd.clone()).or_default().push(Route {
            id,
            folder: folder.to_path_buf(),
            sink: self.sink.clone(),
        });
        self.mine.push((wd, id));
        Ok(())
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        let mut routes = locked(&self.shared.routes);
        for (wd, id) in self.mine.drain(..) {
            let Some(list) = routes.get_mut(&wd) else {
                continue; // its folder went (IN_IGNORED took the routes)
            };
            list.retain(|r| r.id != id);
            if list.is_empty() {
                routes.remove(&wd);
                // The last route of this watch: the kernel stops reporting it.
                let _ = locked(&self.shared.watches).remove(wd);
            }
        }
    }
}

/// Makes reads of `inotify` wait for events (the crate opens it non-blocking), once: its
/// `read_events_blocking` switches the descriptor back and forth with four `fcntl` calls at
/// every read, in every server of the mailbox at every message. False when that failed.
fn set_blocking(inotify: &Inotify) -> bool {
    use std::os::fd::AsRawFd as _;
    let fd = inotify.as_raw_fd();
    // SAFETY: plain fcntl calls on a descriptor this process owns and keeps open.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags != -1 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) != -1
    }
}

/// The thread: reads events for as long as the process lives, and hands each to the sinks
/// of its folder. `blocking`: the descriptor waits by itself ([`set_blocking`]).
fn read_events(mut inotify: Inotify, blocking: bool, shared: &Shared) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = if blocking {
            inotify.read_events(&mut buffer)
        } else {
            inotify.read_events_blocking(&mut buffer)
        };
        let events = match read {
            Ok(events) => events,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(%err, "file watcher error; rescanning");
                every_sink(shared).iter().for_each(Sink::rescan);
                continue;
            }
        };
        for event in events {
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                every_sink(shared).iter().for_each(Sink::rescan);
                continue;
            }
            if event.mask.contains(EventMask::IGNORED) {
                // The watch is gone (its folder removed): its routes go with it.
                locked(&shared.routes).remove(&event.wd);
                continue;
            }
            let targets: Vec<(PathBuf, Sink)> = locked(&shared.routes)
                .get(&event.wd)
                .map(|list| {
                    list.iter()
                        .map(|r| (r.folder.clone(), r.sink.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let kind = seen(event.mask);
            for (folder, sink) in targets {
                let path = match event.name {
                    Some(name) => folder.join(name),
                    None => folder, // the watched folder itself
                };
                sink.note(kind, &[path]);
            }
        }
    }
}

/// How many steps of `nice` the reading thread runs below the rest of the process.
const NICE: libc::c_int = 10;

/// Lowers the calling thread's priority by [`NICE`] (on Linux `nice` acts on the calling
/// thread only): with the cores busy, a tool call's answer and a send go before the reading
/// of file events, most of which are others' mail, and those events then come in fewer,
/// larger reads. With 8 sessions sending at once (the benchmark's throughput figure), the
/// mailbox's servers spent 0.85 to 0.92 ms of CPU a message instead of 1.02 to 1.11 ms;
/// with a core free it changes nothing, and with both cores taken by other programs a
/// message's push took as long as at the thread's normal priority. Not for a watch that
/// must read every file at once (the federation's bridge, which publishes each). The
/// thread holds its locks for no I/O ([`super::Sink::note`]), so the server never waits
/// long for a thread that the scheduler keeps waiting. A failure (a limit on priorities)
/// leaves the thread as it was.
fn lower_priority() {
    // SAFETY: a plain system call about the calling thread; no memory is passed.
    unsafe {
        libc::nice(NICE);
    }
}

/// Every sink of the process, for a lost event (each rescans).
fn every_sink(shared: &Shared) -> Vec<Sink> {
    locked(&shared.routes)
        .values()
        .flatten()
        .map(|r| r.sink.clone())
        .collect()
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

    /// The nice value of a thread of this process, from `/proc`.
    fn nice_of(task: &str) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{task}/stat")).unwrap();
        // Fields after the name in parentheses; nice is the 19th field of the line.
        let after = stat.rsplit_once(") ").unwrap().1;
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn a_watch_that_lets_others_mail_wait_is_read_below_the_rest_of_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let can_wait: crate::watch::CanWait = Arc::new(|_: &str| false);
        let _low = crate::watch::watch_messages(dir.path(), Some(can_wait)).unwrap();
        let _normal = crate::watch::watch_messages(dir.path(), None).unwrap();
        let process = nice_of(&std::process::id().to_string());
        let reader = |name: &str| {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .flatten()
                .map(|t| t.file_name().to_string_lossy().into_owned())
                .find(|t| {
                    std::fs::read_to_string(format!("/proc/self/task/{t}/comm"))
                        .is_ok_and(|c| c.trim() == name)
                })
                .map(|t| nice_of(&t))
        };
        // A thread names and lowers itself as it starts: give it a moment.
        let lowered = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            reader("t9-ipc-watch-lo") == Some((process + NICE).min(19))
        });
        assert!(lowered, "the low thread: {:?}", reader("t9-ipc-watch-lo"));
        assert_eq!(reader("t9-ipc-watch"), Some(process));
    }
}
