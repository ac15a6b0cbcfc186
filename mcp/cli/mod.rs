//! Subcommands for people and scripts: everything but `serve`. This module is the only
//! code that prints: results to stdout, notes and errors to stderr (one line, see `main`).

// The rest of the binary keeps stdout for JSON-RPC; here printing is the job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod archive;
pub mod board;
pub mod claims;
pub mod doctor;
pub mod federation;
pub mod hook;
pub mod inbox;
pub mod install;
pub mod precommit;
pub mod relay;
pub mod search;
pub mod send;
pub mod setup;
pub mod style;
pub mod tail;
pub mod telegram;
pub mod who;

use anyhow::Context as _;
use t9_ipc::config::Config;
use t9_ipc::mailbox::Mailbox;

/// `t9-ipc where`: the mailbox root, alone on a line, for scripts.
pub fn where_is(config: &Config) -> anyhow::Result<()> {
    println!("{}", config.data_dir.display());
    Ok(())
}

/// A mistake in how a command was called: exit code 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Opens the mailbox of `config`, making it when it does not exist: for commands that
/// write a message (`send`, `broadcast`).
pub fn open_mailbox(config: &Config) -> anyhow::Result<Mailbox> {
    Mailbox::open(&config.data_dir)
        .with_context(|| format!("opening the mailbox {}", config.data_dir.display()))
}

/// Opens the mailbox of `config` only when it exists: for the commands that read it or
/// tidy it. They never make a new mailbox (a mistyped `IPC_DATA_DIR` would otherwise
/// become an empty mailbox that looks healthy).
pub fn open_existing(config: &Config) -> anyhow::Result<Mailbox> {
    mailbox_exists(config)?;
    open_mailbox(config)
}

/// Ok when the mailbox root holds an `inbox/` folder; else why not, with what to do.
pub fn mailbox_exists(config: &Config) -> anyhow::Result<()> {
    let root = &config.data_dir;
    let what = if !root.exists() {
        "the folder does not exist"
    } else if !root.is_dir() {
        "it is not a folder"
    } else if !root.join("inbox").is_dir() {
        "the folder holds no inbox/"
    } else {
        return Ok(());
    };
    anyhow::bail!(
        "no mailbox at {} ({}): {what}. Check IPC_DATA_DIR for a typo; a session or \
         `t9-ipc send` makes the mailbox",
        root.display(),
        config.data_dir_source.describe()
    )
}

/// The Claude Code session this process runs in: the live sessions whose server was started
/// by the nearest of this process's ancestors that started any (Claude Code starts both its
/// MCP servers and, through a shell, the commands of its Bash tool). Empty outside one;
/// several when that process started several servers (two MCP entries).
pub fn enclosing_sessions(live: &t9_ipc::heartbeat::Table) -> Option<(u32, Vec<String>)> {
    /// Claude Code → shell → command is two levels; leave room for wrappers.
    const MAX_DEPTH: usize = 32;
    t9_ipc::heartbeat::ancestors(MAX_DEPTH)
        .into_iter()
        .find_map(|pid| {
            let under: Vec<String> = live
                .iter()
                .filter(|(_, e)| e.ppid() == Some(pid))
                .map(|(name, _)| name.clone())
                .collect();
            (!under.is_empty()).then_some((pid, under))
        })
}

/// The live session this process runs under (started by its Claude Code, directly or
/// through shells), else the one `IPC_SESSION_ID` names, else, when `cwd` is given, the
/// only live session started in that folder. See `heartbeat::session_of`.
pub fn this_session(
    config: &Config,
    live: &t9_ipc::heartbeat::Table,
    cwd: Option<&str>,
) -> Option<(String, t9_ipc::heartbeat::FoundBy)> {
    /// Claude Code → shell → hook is two levels; leave room for wrappers.
    const MAX_DEPTH: usize = 32;
    let ancestors = t9_ipc::heartbeat::ancestors(MAX_DEPTH);
    t9_ipc::heartbeat::session_of(live, &ancestors, config.session_name.as_deref(), cwd)
}
