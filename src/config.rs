//! Settings for one process: the only code that reads the environment.

use std::env;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::federation::{self, Settings as FederationSettings};
use crate::telegram::Token;

/// The mailbox of the checkout this binary was built from (`<checkout>/data/ipc`).
const CHECKOUT_DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/ipc");

/// Where the mailbox root came from, for people asking "which mailbox is this?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirSource {
    /// `IPC_DATA_DIR` was set.
    Env,
    /// `IPC_DATA_DIR` was set to a relative path, made absolute against the working folder
    /// at start (so that the process means one folder, whatever it does later).
    EnvRelative,
    /// `data/ipc` of the checkout the binary was built from.
    Checkout,
    /// The checkout's folder is gone: `$XDG_DATA_HOME/t9-ipc` or `~/.local/share/t9-ipc`.
    UserData,
}

impl DataDirSource {
    pub fn describe(self) -> &'static str {
        match self {
            DataDirSource::Env => "set by IPC_DATA_DIR",
            DataDirSource::EnvRelative => {
                "set by IPC_DATA_DIR, a relative path taken from the folder this process started in"
            }
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
    /// `IPC_PUSH`: `on` or `off` overrides what the server finds out about channel events;
    /// unset or `auto` lets it find out.
    pub push: Option<bool>,
    /// An environment variable that shows an account without channels (Bedrock, Vertex,
    /// Foundry), when one is set.
    pub account_without_channels: Option<&'static str>,
    /// `IPC_PUSH_QUIET_MS`: when the limits first hold mail back, the one notice that names
    /// it waits this long, to name what the flood brings meanwhile. Mail that is pushed is
    /// never delayed by it.
    pub push_quiet: Duration,
    /// `IPC_PUSH_RATE`: at most this many messages of one sender are pushed or named per
    /// minute, three times as many of all senders together, and at most 10 events go out a
    /// minute; the rest wait as unread, named in one notice. Answers to this session's own
    /// messages are outside these limits. `None` (0) means no limit at all.
    pub push_rate: Option<u32>,
    /// `IPC_ARCHIVE_DAYS`: finished mail older than this moves to `archive/` when a server
    /// starts (default 7; 0 archives finished mail at once).
    pub archive_after_days: u64,
    /// Telegram settings: present only when `IPC_TG_TOKEN` is set.
    pub telegram: Option<TelegramConfig>,
    /// `CLAUDECODE` is set (to anything but empty or `0`): Claude Code sets it for the
    /// commands its Bash tool runs, so this process probably runs for a model, not a person.
    pub inside_claude_code: bool,
    /// `IPC_SHARE_GROUP=1`: the mailbox is shared with its group on purpose (folders 0770,
    /// files 0660 instead of 0700 and 0600). Every member of the group can then read all
    /// mail and write messages under any name.
    pub share_group: bool,
    /// `IPC_NATS_URL`, `IPC_NATS_CREDS`, `IPC_NATS_CA`, `IPC_MACHINE`: the federation
    /// settings. `Ok(None)` when `IPC_NATS_URL` is unset or empty (federation off); `Err`
    /// says why they are refused (`IPC_MACHINE` set but no valid name).
    pub federation: Result<Option<FederationSettings>, String>,
}

/// The default of `IPC_TG_API_BASE`.
pub const TELEGRAM_API: &str = "https://api.telegram.org";
/// The default of `IPC_TG_GIVE_UP_S`: ten minutes.
pub const TELEGRAM_GIVE_UP: Duration = Duration::from_secs(600);

/// Where escalations go and replies come from. The token is a [`Token`]: it prints as
/// `<redacted>`, so this struct can be logged.
#[derive(Debug, Clone)]
pub struct TelegramConfig {
    /// `IPC_TG_TOKEN`: the bot's token from @BotFather.
    pub token: Token,
    /// `IPC_TG_CHAT`: the one chat escalations are sent to and replies are taken from.
    /// `None` when unset or not a number: nothing is forwarded and every incoming message is
    /// ignored (its chat id is logged, to help find the right one).
    pub chat: Option<i64>,
    /// `IPC_TG_API_BASE` without a trailing `/`; default [`TELEGRAM_API`].
    pub api_base: String,
    /// `IPC_TG_GIVE_UP_S`: how long a forward is retried before the failure is recorded;
    /// default [`TELEGRAM_GIVE_UP`].
    pub give_up_after: Duration,
    /// `IPC_TG_ALLOW`: the Telegram user ids (comma-separated) allowed to write to sessions
    /// and to approve tool calls, besides the users paired with `t9-ipc telegram pair`.
    pub allow: Vec<i64>,
}

impl TelegramConfig {
    /// Reads the `IPC_TG_*` variables; `None` without a token.
    fn from_env() -> Option<TelegramConfig> {
        let token = env::var("IPC_TG_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())?;
        let chat = match env::var("IPC_TG_CHAT").ok().map(|c| c.trim().to_owned()) {
            None => None,
            Some(c) if c.is_empty() => None,
            Some(c) => match c.parse::<i64>() {
                Ok(id) => Some(id),
                Err(_) => {
                    tracing::warn!(
                        value = %c,
                        "IPC_TG_CHAT is not a numeric chat id (e.g. 123456789, or -100… for a \
                         group); escalations are not forwarded"
                    );
                    None
                }
            },
        };
        let api_base = env::var("IPC_TG_API_BASE")
            .ok()
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| TELEGRAM_API.to_owned());
        let give_up_after = match env::var("IPC_TG_GIVE_UP_S") {
            Err(_) => TELEGRAM_GIVE_UP,
            Ok(s) => match s.trim().parse::<f64>() {
                Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
                _ => {
                    tracing::warn!(value = %s, "IPC_TG_GIVE_UP_S is not a number of seconds; using 600");
                    TELEGRAM_GIVE_UP
                }
            },
        };
        Some(TelegramConfig {
            token: Token::new(token),
            chat,
            api_base,
            give_up_after,
            allow: user_ids(&env::var("IPC_TG_ALLOW").unwrap_or_default()),
        })
    }
}

/// The user ids of `IPC_TG_ALLOW`; a part that is no number is warned about and skipped.
fn user_ids(list: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<i64>() {
            Ok(id) if id > 0 => ids.push(id),
            _ => tracing::warn!(value = %part, "IPC_TG_ALLOW: not a Telegram user id; skipped"),
        }
    }
    ids
}

/// The default of `IPC_PUSH_QUIET_MS`.
pub const DEFAULT_PUSH_QUIET: Duration = Duration::from_millis(100);
/// The default of `IPC_PUSH_RATE`.
pub const DEFAULT_PUSH_RATE: u32 = 20;

impl Config {
    /// Reads `IPC_DATA_DIR`, `IPC_SESSION_ID`, the working folder, the `IPC_TG_*`
    /// Telegram variables and the federation's `IPC_NATS_*` and `IPC_MACHINE`.
    pub fn from_env() -> Config {
        let cwd = env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let (data_dir, data_dir_source) = match env::var_os("IPC_DATA_DIR") {
            Some(dir) if !dir.is_empty() => data_dir_from_env(PathBuf::from(dir), &cwd),
            _ => default_data_dir(),
        };
        let session_name = env::var("IPC_SESSION_ID")
            .ok()
            .filter(|s| !s.trim().is_empty());
        let push = match env::var("IPC_PUSH").ok().as_deref().map(str::trim) {
            Some("on" | "1" | "true") => Some(true),
            Some("off" | "0" | "false") => Some(false),
            Some("" | "auto") | None => None,
            Some(other) => {
                tracing::warn!(value = other, "IPC_PUSH is not on, off or auto; using auto");
                None
            }
        };
        let account_without_channels = [
            "CLAUDE_CODE_USE_BEDROCK",
            "CLAUDE_CODE_USE_VERTEX",
            "CLAUDE_CODE_USE_FOUNDRY",
        ]
        .into_iter()
        .find(|var| env::var(var).is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false")));
        Config {
            data_dir,
            data_dir_source,
            session_name,
            cwd,
            push,
            telegram: TelegramConfig::from_env(),
            account_without_channels,
            inside_claude_code: env::var("CLAUDECODE")
                .is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false")),
            share_group: flag("IPC_SHARE_GROUP"),
            federation: federation_from_env(),
            push_quiet: number("IPC_PUSH_QUIET_MS")
                .map_or(DEFAULT_PUSH_QUIET, Duration::from_millis),
            archive_after_days: number("IPC_ARCHIVE_DAYS").unwrap_or(7),
            push_rate: match number("IPC_PUSH_RATE") {
                Some(0) => None,
                Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
                None => Some(DEFAULT_PUSH_RATE),
            },
        }
    }
}

/// The federation settings: `None` when `IPC_NATS_URL` is unset or empty (federation off);
/// refused when `IPC_MACHINE` is set but no valid name.
fn federation_from_env() -> Result<Option<FederationSettings>, String> {
    let var = |name| env::var(name).ok().map(|v| v.trim().to_owned());
    let Some(url) = var("IPC_NATS_URL").filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let path = |name| var(name).filter(|p| !p.is_empty()).map(PathBuf::from);
    let machine = match var("IPC_MACHINE").filter(|m| !m.is_empty()) {
        Some(name) => {
            federation::check_machine(&name).map_err(|e| format!("IPC_MACHINE: {e}"))?;
            name
        }
        None => federation::default_machine(),
    };
    Ok(Some(FederationSettings {
        url,
        creds: path("IPC_NATS_CREDS"),
        ca: path("IPC_NATS_CA"),
        machine,
    }))
}

/// `IPC_DATA_DIR` as given. A relative path is made absolute against `cwd` now, with a
/// note: the same value set in sessions started in other folders means other mailboxes,
/// so they would not see each other, and a later change of folder must not move it.
fn data_dir_from_env(dir: PathBuf, cwd: &Path) -> (PathBuf, DataDirSource) {
    if dir.is_absolute() {
        return (dir, DataDirSource::Env);
    }
    let absolute = cwd.join(&dir);
    tracing::warn!(
        "IPC_DATA_DIR {:?} is relative: using {} (relative to the folder this process started \
         in; sessions started elsewhere would use another mailbox, so give an absolute path)",
        dir,
        absolute.display()
    );
    (absolute, DataDirSource::EnvRelative)
}

/// A yes/no setting: on for `1`, `true`, `yes` or `on`.
fn flag(var: &str) -> bool {
    env::var(var).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The default log filter when `RUST_LOG` is unset.
pub const DEFAULT_LOG: &str = "t9_ipc=info,warn";

/// The log filter: `RUST_LOG` (default [`DEFAULT_LOG`]), with rmcp held to `info`. rmcp's own
/// debug and trace output holds whole JSON-RPC messages, message bodies among them; only
/// `IPC_LOG_WIRE=1` lets `RUST_LOG` turn it on. Read before [`Config::from_env`].
pub fn log_filter() -> String {
    let asked = env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_LOG.to_owned());
    filter_without_wire(&asked, flag("IPC_LOG_WIRE"))
}

fn filter_without_wire(asked: &str, wire: bool) -> String {
    if wire {
        return asked.to_owned();
    }
    let quiet = |level: &str| {
        matches!(
            level.trim().to_ascii_lowercase().as_str(),
            "off" | "error" | "warn" | "info"
        )
    };
    let (mut cap, mut rmcp_quiet) = (false, false);
    let mut kept = Vec::new();
    for d in asked.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map(|(_, level)| level);
        if d.starts_with("rmcp") {
            if level.is_some_and(quiet) {
                rmcp_quiet = true;
                kept.push(d);
            } else {
                cap = true; // rmcp's debug or trace: only with IPC_LOG_WIRE=1
            }
            continue;
        }
        // A bare level (`debug`) reaches rmcp too.
        cap |= matches!(d.to_ascii_lowercase().as_str(), "debug" | "trace");
        kept.push(d);
    }
    if cap && !rmcp_quiet {
        kept.push("rmcp=info");
    }
    kept.join(",")
}

/// A whole number from the environment; anything else is warned about and ignored.
fn number(var: &str) -> Option<u64> {
    let value = env::var(var).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!(var, %value, "not a whole number; using the default");
            None
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

#[cfg(test)]
mod tests {
    #[test]
    fn rmcp_wire_logs_need_an_explicit_opt_in() {
        use super::filter_without_wire as f;
        assert_eq!(f("debug", false), "debug,rmcp=info");
        assert_eq!(f("t9_ipc=info,warn", false), "t9_ipc=info,warn");
        assert_eq!(f("t9_ipc=debug", false), "t9_ipc=debug");
        assert_eq!(
            f("rmcp=trace, rmcp::service=debug,t9_ipc=debug", false),
            "t9_ipc=debug,rmcp=info"
        );
        assert_eq!(f("rmcp=warn,trace", false), "rmcp=warn,trace");
        assert_eq!(f("t9_ipc", false), "t9_ipc");
        assert_eq!(f("rmcp=trace", true), "rmcp=trace");
    }
}
