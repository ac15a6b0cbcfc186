//! The library's one error type. Every variant that comes from the file system names the path.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A caller's value was refused; the text says what would be accepted.
    #[error("{0}")]
    Refused(String),
    /// Telegram could not be set up (e.g. an `IPC_TG_API_BASE` that is no URL). The text
    /// never holds the token.
    #[error("Telegram: {0}")]
    Telegram(String),
    /// A file lock another process held for longer than the caller waits.
    #[error(
        "the lock {} is held by {} and was not freed within {:.1} s; try again (`fuser {}` \
         shows the holder)",
        path.display(),
        holder.map_or("another process".to_owned(), |pid| format!("process {pid}")),
        waited.as_secs_f32(),
        path.display()
    )]
    LockBusy {
        path: PathBuf,
        holder: Option<u32>,
        waited: std::time::Duration,
    },
    /// A name another live session holds.
    #[error(
        "the name {name:?} is held by another live session (pid {pid}{}); choose another name",
        cwd.as_deref().map(|c| format!(", in {c}")).unwrap_or_default()
    )]
    NameTaken {
        name: String,
        pid: u32,
        cwd: Option<String>,
    },
}

impl Error {
    /// Wraps an `io::Error` with what was being done and to which path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}
