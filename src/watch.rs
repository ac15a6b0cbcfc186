//! File-system events on `inbox/` turned into "these files changed" or "rescan everything".
//!
//! Events are hints, not facts. A message written the atomic way arrives as a rename into
//! place; a file written in place (a person's `cp`, another tool) is reported when its writer
//! closes it, so a half-written file is never read on the hot path. The kernel reports a lost
//! event (queue overflow) as a rescan, and so does a watcher error: nothing is missed, it is
//! only found by a whole scan instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// More changed files than this waiting at once become one rescan.
const MAX_PENDING: usize = 4096;

/// What changed since the last [`Changes::take`].
#[derive(Debug, Default)]
pub struct Changed {
    /// `.md` files that appeared, were completed or disappeared; look at each again.
    pub files: BTreeSet<PathBuf>,
    /// Events were lost or too many: scan the whole folder.
    pub rescan: bool,
}

/// The receiving end of a watch: wait for a hint, then take what changed.
pub struct Changes {
    hints: mpsc::Receiver<()>,
    pending: Arc<Mutex<Changed>>,
}

impl Changes {
    /// A receiver that never yields (no watcher could be started).
    pub fn none() -> Changes {
        Changes {
            hints: mpsc::channel(1).1,
            pending: Arc::default(),
        }
    }

    /// Waits until something changed; `None` when the watcher is gone.
    pub async fn changed(&mut self) -> Option<()> {
        self.hints.recv().await
    }

    /// Takes everything that changed so far.
    pub fn take(&self) -> Changed {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Watches `dir` (not its subfolders). Dropping the watcher stops the events.
pub fn watch(dir: &Path) -> Result<(RecommendedWatcher, Changes)> {
    let (tx, hints) = mpsc::channel(1);
    let pending = Arc::new(Mutex::new(Changed::default()));
    let shared = pending.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let mut changed = shared.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Ok(event) if event.need_rescan() => changed.rescan = true,
            Ok(event) => {
                if !settles_a_file(&event.kind) {
                    return;
                }
                let md = event
                    .paths
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "md"));
                changed.files.extend(md);
                if changed.files.len() > MAX_PENDING {
                    changed.files.clear();
                    changed.rescan = true;
                }
            }
            Err(err) => {
                tracing::warn!(%err, "file watcher error; rescanning");
                changed.rescan = true;
            }
        }
        drop(changed);
        // Full means a hint is already waiting; it will take this change too.
        let _ = tx.try_send(());
    })
    .map_err(|e| watch_error(dir, e))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| watch_error(dir, e))?;
    Ok((watcher, Changes { hints, pending }))
}

/// True for events after which a file is complete or gone: a rename into or out of the
/// folder, a writer closing it, a removal. A create or a write alone means a writer is still
/// at work; its close follows.
fn settles_a_file(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Name(
            RenameMode::To | RenameMode::From | RenameMode::Both | RenameMode::Any,
        )) => true,
        EventKind::Modify(_) | EventKind::Create(_) => false,
        EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
}

fn watch_error(dir: &Path, err: notify::Error) -> Error {
    Error::Io {
        op: "watching",
        path: dir.to_path_buf(),
        source: std::io::Error::other(err),
    }
}
