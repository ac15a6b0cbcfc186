//! File-system events on `inbox/` turned into "these files changed" or "rescan everything".
//!
//! Events are hints, not facts. A message written the atomic way arrives as a rename into
//! place; a file written in place (a person's `cp`, another tool) is reported when its writer
//! closes it; a hard link (a second name for a finished file) when it is created. A file
//! still open for writing is not read (the reader checks); its close follows. The kernel
//! reports a lost event (queue overflow) as a rescan, and so does a watcher error: nothing is
//! missed, it is only found by a whole scan instead. The two folders above `inbox/` are
//! watched too, so that an `inbox/`, or the whole mailbox, deleted and made again is watched
//! again ([`rewatch`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[cfg(not(target_os = "linux"))]
use notify::EventKind;
use tokio::sync::mpsc;

use crate::error::{Error, Result};

#[cfg(target_os = "linux")]
mod kernel;

/// More changed files than this waiting at once become one rescan.
const MAX_PENDING: usize = 4096;

/// How old a folder's modification time must be, when it is read, to vouch for a listing or
/// for the events taken right after: older than the coarse clock that stamps folders (a
/// jiffy, at most 10 ms) and than the delivery of an event to the watcher's thread. A younger
/// time may hide a change made within the same tick, or one whose event is still on its way
/// (the rule git's index uses for "racy" files).
pub const SETTLE: Duration = Duration::from_millis(25);

/// The same on a file system that keeps times to the second (ext3, HFS+) or two (FAT): taken
/// to be one when a time has no fraction of a second.
pub const SETTLE_COARSE: Duration = Duration::from_secs(2);

/// How old `mtime` must be to vouch: [`SETTLE`], or [`SETTLE_COARSE`] for a time that looks
/// kept to the second.
pub fn settle_for(mtime: SystemTime) -> Duration {
    let whole_second = mtime
        .duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|d| d.subsec_nanos() == 0);
    if whole_second { SETTLE_COARSE } else { SETTLE }
}

/// The time `mtime` still needs to vouch, read `now`: zero once it does. A time in the
/// future (a clock set back) needs its whole way back plus the settling time.
pub fn unsettled_for(mtime: SystemTime, now: SystemTime) -> Duration {
    let settle = settle_for(mtime);
    match now.duration_since(mtime) {
        Ok(age) => settle.saturating_sub(age),
        Err(ahead) => ahead.duration() + settle,
    }
}

/// A folder's modification time as read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FolderTime {
    /// Older than [`SETTLE`] when read: while the folder still has it, nothing was added to
    /// or removed from it since, beyond what was listed or taken with it.
    Settled(SystemTime),
    /// Too recent to vouch for anything yet: look again after this long.
    Young(Duration),
    /// Not read (the folder is missing, or nobody looked).
    #[default]
    Unknown,
}

impl FolderTime {
    /// `dir`'s modification time now.
    pub fn of(dir: &Path) -> FolderTime {
        let Ok(mtime) = std::fs::metadata(dir).and_then(|m| m.modified()) else {
            return FolderTime::Unknown;
        };
        match unsettled_for(mtime, SystemTime::now()) {
            Duration::ZERO => FolderTime::Settled(mtime),
            left => FolderTime::Young(left),
        }
    }

    /// How long until it may vouch, when it is young.
    pub fn young(self) -> Option<Duration> {
        match self {
            FolderTime::Young(left) => Some(left),
            _ => None,
        }
    }

    /// The time, when it vouches.
    pub fn settled(self) -> Option<SystemTime> {
        match self {
            FolderTime::Settled(t) => Some(t),
            _ => None,
        }
    }
}

/// What changed since the last [`Changes::take`].
#[derive(Debug, Default)]
pub struct Changed {
    /// `.md` files that appeared, were completed or disappeared; look at each again.
    pub files: BTreeSet<PathBuf>,
    /// Events were lost or too many: scan the whole folder.
    pub rescan: bool,
    /// The folder itself was removed, renamed or made: watch it again ([`rewatch`]).
    pub rewatch: bool,
    /// The folder's time, read just before these changes were taken.
    pub time: FolderTime,
}

/// Tells, from a message file's stem, that the file can wait ([`watch_messages`]): true for
/// a file that is surely not the watcher's business (another session's mail).
pub type CanWait = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The changes waiting to be taken, with what the watcher's thread knows of them.
#[derive(Default)]
struct Pending {
    changed: Changed,
    /// Something among them cannot wait: a file the [`CanWait`] did not pass over, a
    /// rescan, or a folder to watch again.
    urgent: bool,
    /// A hint went out since they were last taken.
    hinted: bool,
}

/// The receiving end of a watch: wait for a hint, then take what changed.
pub struct Changes {
    hints: mpsc::Receiver<()>,
    pending: Arc<Mutex<Pending>>,
    folder: PathBuf,
}

impl Changes {
    /// A receiver that never yields (no watcher could be started).
    pub fn none() -> Changes {
        Changes {
            hints: mpsc::channel(1).1,
            pending: Arc::default(),
            folder: PathBuf::new(),
        }
    }

    /// Waits until something changed; `None` when the watcher is gone.
    pub async fn changed(&mut self) -> Option<()> {
        self.hints.recv().await
    }

    /// Takes everything that changed so far, with the folder's time read just before (one
    /// `stat`, answered from the kernel's cache): a settled time vouches that every change
    /// up to it is among these or earlier ones.
    pub fn take(&self) -> Changed {
        let time = FolderTime::of(&self.folder);
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        Changed {
            time,
            ..pending.changed
        }
    }

    /// True when every change waiting can wait ([`CanWait`]): files, all of them passed
    /// over. Further such changes hint no more until these are taken, so a watcher that
    /// takes them a little later ([`SETTLE`]) is woken once for a whole burst of others'
    /// mail instead of once a file.
    pub fn can_wait(&self) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        !pending.urgent && !pending.changed.files.is_empty()
    }
}

/// A running watch; dropping it stops the events. On Linux the kernel's inotify, asked only
/// for what can settle a file or move a folder (no opens, no writes in progress: with ten
/// servers on one mailbox, each message would otherwise wake every one of them seven
/// times); elsewhere the `notify` crate's watcher.
pub struct Watcher {
    #[cfg(target_os = "linux")]
    inner: kernel::Kernel,
    #[cfg(not(target_os = "linux"))]
    inner: notify::RecommendedWatcher,
}

/// What an event says about a path, whichever backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Made: a folder came, or a file a writer is still at (its close follows), or a hard
    /// link to a finished file (no close follows; see [`is_a_new_link`]).
    Created,
    /// Renamed in or out, or removed: a file settled or gone, or a folder came or went.
    Moved,
    /// Closed after writing (or an event the backend could not name): look at the file.
    Settled,
    /// A look, or a write in progress: nothing to do.
    Other,
}

/// Where a watch's events go: the changes waiting to be taken, and the hint.
#[derive(Clone)]
struct Sink {
    pending: Arc<Mutex<Pending>>,
    hint: mpsc::Sender<()>,
    /// The watched folder, and the folder above it.
    folder: PathBuf,
    above: Option<PathBuf>,
    /// Only `.md` files count ([`watch_messages`]): a writer's temporary file, made, written
    /// and closed before its rename, wakes nobody.
    messages_only: bool,
    /// Which message files can wait for the next hint ([`Changes::can_wait`]).
    can_wait: Option<CanWait>,
}

impl Sink {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events were lost, or the watcher failed: everything is looked at again.
    fn rescan(&self) {
        let mut pending = self.pending();
        pending.changed.rescan = true;
        pending.urgent = true;
        drop(pending);
        // Full means a hint is already waiting; it will take this change too.
        let _ = self.hint.try_send(());
    }

    /// Notes one event about `paths`, and hints when there is something to take.
    fn note(&self, seen: Seen, paths: &[PathBuf]) {
        let folder = self.folder.as_path();
        let inside = |p: &PathBuf| p.parent() == Some(folder);
        let is_folder = |p: &PathBuf| *p == folder || self.above.as_deref() == Some(p.as_path());
        let is_message = |p: &PathBuf| inside(p) && p.extension().is_some_and(|e| e == "md");
        let comes_or_goes = matches!(seen, Seen::Created | Seen::Moved);
        let folder_came_or_went = comes_or_goes && paths.iter().any(is_folder);
        let files = !folder_came_or_went && paths.iter().any(inside);
        // Worked out before the lock is taken (a `stat`; a look at the session's name): a
        // watcher's thread runs at a low priority and must not hold what the server waits for.
        if files {
            let wanted: Vec<&PathBuf> = paths
                .iter()
                .filter(|p| !self.messages_only || is_message(p))
                .collect();
            let settles = match seen {
                Seen::Moved | Seen::Settled => !wanted.is_empty(),
                Seen::Created => is_a_new_link(&wanted),
                Seen::Other => false,
            };
            if !settles {
                return;
            }
        }
        let can_wait = files
            && self.can_wait.as_ref().is_some_and(|can_wait| {
                let mut messages = paths.iter().filter(|p| is_message(p)).peekable();
                messages.peek().is_some()
                    && messages.all(|p| {
                        p.file_stem()
                            .and_then(|s| s.to_str())
                            .is_some_and(|stem| can_wait(stem))
                    })
            });
        let mut pending = self.pending();
        let changed = &mut pending.changed;
        if folder_came_or_went {
            // inbox/ or the mailbox itself came or went: scan it, and watch the new one.
            changed.rescan = true;
            changed.rewatch = true;
        } else if !files && !changed.rewatch {
            return; // a folder above: another of its files
        }
        changed
            .files
            .extend(paths.iter().filter(|p| is_message(p)).cloned());
        if changed.files.len() > MAX_PENDING {
            changed.files.clear();
            changed.rescan = true;
        }
        let urgent = !can_wait || changed.rescan || changed.rewatch;
        pending.urgent |= urgent;
        // Changes that can wait hint once: the watcher comes for them in its time.
        let told = !urgent && pending.hinted;
        pending.hinted = true;
        drop(pending);
        if !told {
            let _ = self.hint.try_send(());
        }
    }
}

/// Watches `dir` (not its subfolders), and the two folders above it for `dir` or its
/// mailbox coming and going. Dropping the watcher stops the events. Any file of `dir` wakes
/// it ([`Changed::files`] names only the `.md` ones).
pub fn watch(dir: &Path) -> Result<(Watcher, Changes)> {
    watch_with(dir, false, None)
}

/// [`watch`] for a folder of messages (`inbox/`): only `.md` files wake it, so a message
/// written the atomic way wakes its watchers once, at its rename, not also at the close of
/// its temporary file (with nine servers on one mailbox, nine wake-ups for nothing a
/// message). With `can_wait`, files it passes over hint once until they are taken
/// ([`Changes::can_wait`]).
pub fn watch_messages(dir: &Path, can_wait: Option<CanWait>) -> Result<(Watcher, Changes)> {
    watch_with(dir, true, can_wait)
}

fn watch_with(
    dir: &Path,
    messages_only: bool,
    can_wait: Option<CanWait>,
) -> Result<(Watcher, Changes)> {
    let (hint, hints) = mpsc::channel(1);
    let pending = Arc::new(Mutex::new(Pending::default()));
    let sink = Sink {
        pending: pending.clone(),
        hint,
        folder: dir.to_path_buf(),
        above: dir.parent().map(Path::to_path_buf),
        messages_only,
        can_wait,
    };
    // A watch that lets others' mail wait reads at a lower priority (`kernel`).
    let low = sink.can_wait.is_some();
    let mut watcher = Watcher::start(sink, dir, low)?;
    // The folder two above reports the mailbox itself made again; best effort (it may be
    // one a user cannot watch), since the mailbox is rarely deleted whole.
    if let Some(top) = dir.parent().and_then(Path::parent)
        && let Err(err) = watcher.add(top, false)
    {
        tracing::debug!(%err, dir = %top.display(), "not watching the folder above the mailbox");
    }
    watcher.rewatch(dir)?;
    Ok((
        watcher,
        Changes {
            hints,
            pending,
            folder: dir.to_path_buf(),
        },
    ))
}

impl Watcher {
    /// Watches `dir` and the folder above it again, after either was removed and made
    /// again. Fails while one is missing; a watch further up reports when it comes back.
    pub fn rewatch(&mut self, dir: &Path) -> Result<()> {
        if let Some(above) = dir.parent() {
            self.add(above, false)?;
        }
        self.add(dir, true)
    }

    #[cfg(target_os = "linux")]
    fn start(sink: Sink, dir: &Path, low: bool) -> Result<Watcher> {
        let inner = kernel::Kernel::start(sink, low).map_err(|e| Error::Io {
            op: "watching",
            path: dir.to_path_buf(),
            source: e,
        })?;
        Ok(Watcher { inner })
    }

    /// Watches `folder`: for its files when `files`, else only for folders coming and going.
    #[cfg(target_os = "linux")]
    fn add(&mut self, folder: &Path, files: bool) -> Result<()> {
        self.inner
            .add(folder, files)
            .map_err(|e| Error::io("watching", folder)(e))
    }

    #[cfg(not(target_os = "linux"))]
    fn start(sink: Sink, dir: &Path, _low: bool) -> Result<Watcher> {
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        let inner =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) if event.need_rescan() => sink.rescan(),
                Ok(event) => {
                    let seen = match event.kind {
                        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Seen::Settled,
                        EventKind::Access(_) => Seen::Other,
                        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => {
                            Seen::Moved
                        }
                        EventKind::Create(_) => Seen::Created,
                        EventKind::Modify(_) => Seen::Other,
                        EventKind::Any | EventKind::Other => Seen::Settled,
                    };
                    sink.note(seen, &event.paths);
                }
                Err(err) => {
                    tracing::warn!(%err, "file watcher error; rescanning");
                    sink.rescan();
                }
            })
            .map_err(|e| watch_error(dir, e))?;
        Ok(Watcher { inner })
    }

    #[cfg(not(target_os = "linux"))]
    fn add(&mut self, folder: &Path, _files: bool) -> Result<()> {
        use notify::Watcher as _;
        self.inner
            .watch(folder, notify::RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(folder, e))
    }
}

/// True for a new name of a file that has others: a hard link (link(2)) to a finished file
/// is complete when it is made, and no close follows. A file created to be written has one
/// name; it is read at its close.
fn is_a_new_link(paths: &[&PathBuf]) -> bool {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .any(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.nlink() > 1))
}

#[cfg(not(target_os = "linux"))]
fn watch_error(dir: &Path, err: notify::Error) -> Error {
    Error::Io {
        op: "watching",
        path: dir.to_path_buf(),
        source: std::io::Error::other(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(folder: &Path, messages_only: bool) -> (Sink, mpsc::Receiver<()>) {
        let (hint, hints) = mpsc::channel(1);
        let sink = Sink {
            pending: Arc::default(),
            hint,
            folder: folder.to_path_buf(),
            above: folder.parent().map(Path::to_path_buf),
            messages_only,
            can_wait: None,
        };
        (sink, hints)
    }

    #[test]
    fn a_message_watch_wakes_at_a_message_and_not_at_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        let (tmp, md) = (inbox.join("x.tmp.0a1b2c3d"), inbox.join("x.md"));
        let (messages, mut woken) = sink(&inbox, true);
        messages.note(Seen::Settled, std::slice::from_ref(&tmp));
        messages.note(Seen::Moved, std::slice::from_ref(&tmp));
        assert!(woken.try_recv().is_err(), "woken by a temporary file");
        messages.note(Seen::Moved, &[tmp.clone(), md.clone()]);
        assert!(woken.try_recv().is_ok());
        assert_eq!(
            messages.pending().changed.files,
            BTreeSet::from([md.clone()])
        );
        // The folder going still wakes it; any file wakes a plain watch.
        messages.note(Seen::Moved, std::slice::from_ref(&inbox));
        assert!(woken.try_recv().is_ok());
        let (any, mut woken) = sink(&inbox, false);
        any.note(Seen::Settled, std::slice::from_ref(&tmp));
        assert!(woken.try_recv().is_ok());
        assert!(any.pending().changed.files.is_empty());
    }

    #[test]
    fn files_that_can_wait_hint_once_until_they_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        let (mut sink, mut woken) = sink(&inbox, true);
        sink.can_wait = Some(Arc::new(|stem: &str| stem.starts_with("others")));
        let pending = sink.pending.clone();
        let changes = Changes {
            hints: mpsc::channel(1).1,
            pending,
            folder: inbox.clone(),
        };
        let md = |stem: &str| inbox.join(format!("{stem}.md"));
        assert!(!changes.can_wait(), "nothing waits yet");
        sink.note(Seen::Moved, &[md("others-1")]);
        assert!(woken.try_recv().is_ok(), "the first file of a burst hints");
        assert!(changes.can_wait());
        sink.note(Seen::Moved, &[md("others-2")]);
        sink.note(Seen::Settled, &[md("others-3")]);
        assert!(
            woken.try_recv().is_err(),
            "the rest of the burst hints no more"
        );
        // A file that cannot wait hints at once, and what waits goes with it.
        sink.note(Seen::Moved, &[md("mine-1")]);
        assert!(woken.try_recv().is_ok());
        assert!(!changes.can_wait());
        let taken = changes.take();
        assert_eq!(taken.files.len(), 4);
        // Taken: the next burst hints again; so does a rescan among waiting files.
        sink.note(Seen::Moved, &[md("others-4")]);
        assert!(woken.try_recv().is_ok());
        sink.rescan();
        assert!(woken.try_recv().is_ok());
        assert!(!changes.can_wait());
        assert!(changes.take().rescan);
    }

    #[test]
    fn a_folder_time_vouches_only_once_it_is_older_than_the_settling_time() {
        let dir = tempfile::tempdir().unwrap();
        // Made a moment ago.
        assert!(FolderTime::of(dir.path()).young().is_some());
        let then = SystemTime::now() - Duration::from_millis(1500);
        std::fs::File::open(dir.path())
            .unwrap()
            .set_modified(then)
            .unwrap();
        assert_eq!(FolderTime::of(dir.path()), FolderTime::Settled(then));
        // A file renamed in changes the time, and a new time is young again.
        std::fs::write(dir.path().join("a.tmp"), "x").unwrap();
        std::fs::rename(dir.path().join("a.tmp"), dir.path().join("a.md")).unwrap();
        assert!(FolderTime::of(dir.path()).young().is_some());
        assert_eq!(
            FolderTime::of(&dir.path().join("gone")),
            FolderTime::Unknown
        );
    }

    #[test]
    fn a_time_kept_to_the_second_settles_only_after_two_seconds() {
        let fine = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let coarse = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ms = Duration::from_millis;
        assert_eq!(unsettled_for(fine, fine + ms(10)), ms(15));
        assert_eq!(unsettled_for(fine, fine + ms(25)), Duration::ZERO);
        assert_eq!(unsettled_for(coarse, coarse + ms(500)), ms(1500));
        assert_eq!(unsettled_for(coarse, coarse + ms(2000)), Duration::ZERO);
        // A time ahead of the clock vouches for nothing until the clock has passed it.
        assert_eq!(unsettled_for(fine + ms(100), fine), ms(125));
    }
}
