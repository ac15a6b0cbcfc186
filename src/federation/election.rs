//! Which process of a machine runs the bridge: the one holding the exclusive lock on
//! `<data>/federation/bridge.lock`. The kernel drops the lock when its holder dies, however
//! it dies, and a process waiting for it gets it at once: a standby takes over within
//! milliseconds, without polling.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// The held lock; dropping it (or the process ending) hands the bridge to a standby.
#[derive(Debug)]
pub struct Leadership {
    _file: File,
}

/// Takes the lock if no process holds it; `None` when another one does.
pub fn try_lead(path: &Path) -> Result<Option<Leadership>> {
    let file = open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Leadership { _file: file })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(Error::io("locking", path)(e)),
    }
}

/// Waits for the lock on a blocking thread until it is ours or `cancel` fires (`None`).
/// A lock another process holds never blocks the async side.
pub async fn lead(path: &Path, cancel: &CancellationToken) -> Result<Option<Leadership>> {
    if let Some(held) = try_lead(path)? {
        return Ok(Some(held));
    }
    let file = open(path)?;
    let waiting_path = path.to_path_buf();
    let mut wait = tokio::task::spawn_blocking(move || {
        file.lock()
            .map(|()| Leadership { _file: file })
            .map_err(Error::io("locking", &waiting_path))
    });
    tokio::select! {
        got = &mut wait => got.map_err(|e| Error::Refused(format!("waiting for the bridge lock: {e}")))?.map(Some),
        // The blocked thread stays parked in flock until the process ends; that is harmless,
        // and nothing else waits for it.
        () = cancel.cancelled() => Ok(None),
    }
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(Error::io("opening", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_at_a_time_and_a_standby_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.lock");
        let first = try_lead(&path).unwrap().expect("free lock");
        assert!(try_lead(&path).unwrap().is_none());
        let cancel = CancellationToken::new();
        let standby = {
            let path = path.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { lead(&path, &cancel).await })
        };
        tokio::task::yield_now().await;
        assert!(!standby.is_finished());
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(10), standby)
            .await
            .expect("the standby takes over")
            .unwrap()
            .unwrap();
        assert!(second.is_some());
        // A standby that is told to stop stops.
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(lead(&path, &stop).await.unwrap().is_none());
    }
}
