//! File-system events on `inbox/` turned into "something changed": a hint to rescan.
//!
//! Events are hints, not facts: an atomic write arrives as a create or a rename, bursts are
//! folded into one pending hint, and a missed event is caught by the next rescan.

use std::path::Path;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Watches `dir` (not its subfolders). The returned receiver yields `()` when something in it
/// may have changed; at most one hint waits at a time. Dropping the watcher stops the events.
pub fn watch(dir: &Path) -> Result<(RecommendedWatcher, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            Ok(_) => {
                // Full means a rescan is already pending, which will see this change too.
                let _ = tx.try_send(());
            }
            Err(err) => {
                tracing::warn!(%err, "file watcher error; rescanning");
                let _ = tx.try_send(());
            }
        }
    })
    .map_err(|e| watch_error(dir, e))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| watch_error(dir, e))?;
    Ok((watcher, rx))
}

fn watch_error(dir: &Path, err: notify::Error) -> Error {
    Error::Io {
        op: "watching",
        path: dir.to_path_buf(),
        source: std::io::Error::other(err),
    }
}
