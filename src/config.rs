//! Settings for one process: the only code that reads the environment.

use std::env;
use std::path::{Path, PathBuf};

/// The mailbox of the checkout this binary was built from (`<checkout>/data/ipc`).
const CHECKOUT_DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/ipc");

/// Where the mailbox root came from, for people asking "which mailbox is this?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirSource {
    /// `IPC_DATA_DIR` was set.
    Env,
    /// `data/ipc` of the checkout the binary was built from.
    Checkout,
    /// The checkout's folder is gone: `$XDG_DATA_HOME/t9-ipc` or `~/.local/share/t9-ipc`.
    UserData,
}

impl DataDirSource {
    pub fn describe(self) -> &'static str {
        match self {
            DataDirSource::Env => "set by IPC_DATA_DIR",
            DataDirSource::Checkout => {
                "the data/ipc folder of the checkout this binary was built from"
            }
            DataDirSource::UserData => {
                "the user data folder (the checkout this binary was built from is gone)"
            }
        }
    }
}

/// Everything a process needs to know about its surroundings, read once at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The mailbox root: holds `inbox/`, `archive/`, `heartbeats.json`.
    pub data_dir: PathBuf,
    pub data_dir_source: DataDirSource,
    /// `IPC_SESSION_ID`: the name this session asks for instead of the default.
    pub session_name: Option<String>,
    /// The working folder: the project this session works on.
    pub cwd: PathBuf,
}

impl Config {
    /// Reads `IPC_DATA_DIR`, `IPC_SESSION_ID` and the working folder.
    pub fn from_env() -> Config {
        let (data_dir, data_dir_source) = match env::var_os("IPC_DATA_DIR") {
            Some(dir) if !dir.is_empty() => (PathBuf::from(dir), DataDirSource::Env),
            _ => default_data_dir(),
        };
        let session_name = env::var("IPC_SESSION_ID")
            .ok()
            .filter(|s| !s.trim().is_empty());
        let cwd = env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        Config {
            data_dir,
            data_dir_source,
            session_name,
            cwd,
        }
    }
}

/// The zero-configuration mailbox: one place per installed binary, whatever folder a session
/// starts in, so that sessions of different projects find each other.
fn default_data_dir() -> (PathBuf, DataDirSource) {
    let checkout = Path::new(CHECKOUT_DATA_DIR);
    if checkout.is_dir() {
        return (checkout.to_path_buf(), DataDirSource::Checkout);
    }
    let base = env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(env::temp_dir);
    (base.join("t9-ipc"), DataDirSource::UserData)
}

/// What the environment says about Telegram, for a person checking the setup (`t9-ipc
/// doctor`). Holds whether a token is set, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelegramSetting {
    /// `IPC_TG_TOKEN` is set and not empty.
    pub token_set: bool,
    /// `IPC_TG_CHAT`.
    pub chat: Option<String>,
    /// `IPC_TG_API_BASE`, when set.
    pub api_base: Option<String>,
}

impl TelegramSetting {
    pub fn from_env() -> TelegramSetting {
        let var = |name| env::var(name).ok().filter(|v| !v.trim().is_empty());
        TelegramSetting {
            token_set: var("IPC_TG_TOKEN").is_some(),
            chat: var("IPC_TG_CHAT"),
            api_base: var("IPC_TG_API_BASE"),
        }
    }
}

/// True when `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
pub fn no_color() -> bool {
    env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}
