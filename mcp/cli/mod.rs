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
pub mod style;
pub mod tail;
pub mod telegram;
pub mod who;

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rmcp::ServiceExt;
use rmcp::transport::TokioChildProcess;
use t9_ipc::config::Config;
use t9_ipc::mailbox::Mailbox;
use tokio::process::Command;

/// `t9-ipc where`: the mailbox root, alone on a line, for scripts.
pub fn where_is(config: &Config) -> anyhow::Result<()> {
    println!("{}", config.data_dir.display());
    Ok(())
}

/// `t9-ipc setup`: checks the mailbox, starts `t9-ipc serve` on a scratch mailbox and talks
/// MCP to it, then prints the lines that add the server to Claude Code.
pub async fn setup(config: &Config) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this binary")?;
    // Setup is where a new user starts: it may make the mailbox, and says so.
    let existed = mailbox_exists(config).is_ok();
    let mailbox = Mailbox::open(&config.data_dir)
        .with_context(|| format!("opening the mailbox {}", config.data_dir.display()))?;
    println!("t9-ipc {} at {}", env!("CARGO_PKG_VERSION"), exe.display());
    println!(
        "mailbox: {} ({}{})",
        mailbox.root().display(),
        config.data_dir_source.describe(),
        if existed { "" } else { "; created now" }
    );

    let (handshake, tools) = self_check(&exe).await?;
    println!(
        "self-check: `t9-ipc serve` answered in {} ms, declares claude/channel, tools: {}",
        handshake.as_millis(),
        tools.join(", ")
    );
    let exe = exe.display();
    println!(
        "\nAdd it to Claude Code for all your projects:\n\
         \n  claude mcp add --scope user t9-ipc -- {exe} serve\n\
         \nor put this in ~/.claude.json under \"mcpServers\":\n\
         \n  \"t9-ipc\": {{ \"type\": \"stdio\", \"command\": \"{exe}\", \"args\": [\"serve\"] }}\n\
         \nThen start each session with channels on, so messages arrive by themselves:\n\
         \n  claude --dangerously-load-development-channels server:t9-ipc\n\
         \nWithout that flag the tools still work; ask Claude to check unread messages, or let a \
         hook bring them with each prompt (`t9-ipc install --dry-run` prints the settings)."
    );
    Ok(())
}

/// Starts `t9-ipc serve` on a scratch mailbox and talks MCP to it: the time to the
/// `initialize` answer and the tool names, or why the check failed.
async fn self_check(exe: &std::path::Path) -> anyhow::Result<(Duration, Vec<String>)> {
    let scratch = tempfile::tempdir().context("making a scratch mailbox")?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .env("IPC_DATA_DIR", scratch.path())
        .env("IPC_SESSION_ID", "setup-check")
        // The check must not join the user's Telegram bot (it would read their replies into
        // the scratch mailbox).
        .env_remove("IPC_TG_TOKEN")
        // Nor the federation (the scratch mailbox would claim this machine's name).
        .env_remove("IPC_NATS_URL");
    // The check server's logs are kept out of this friendly output; they are shown only
    // when the check fails.
    let log_path = scratch.path().join("serve.log");
    let log = std::fs::File::create(&log_path).context("making the check's log file")?;
    let server_log = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!("; its log: {}", text.replace('\n', " | "))
        }
    };
    let started = Instant::now();
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting `t9-ipc serve`")?;
    let client = match tokio::time::timeout(Duration::from_secs(10), ().serve(transport)).await {
        Err(_) => bail!("`t9-ipc serve` did not answer within 10 s{}", server_log()),
        Ok(Err(err)) => bail!(
            "the MCP handshake with `t9-ipc serve` failed: {err}{}",
            server_log()
        ),
        Ok(Ok(client)) => client,
    };
    let handshake = started.elapsed();
    let info = client
        .peer_info()
        .context("the server sent no initialize result")?;
    let channel = info
        .capabilities
        .experimental
        .as_ref()
        .is_some_and(|e| e.contains_key("claude/channel"));
    let tools = client.list_all_tools().await.context("listing the tools")?;
    client.cancel().await.ok();
    if !channel {
        bail!("the server does not declare the claude/channel capability");
    }
    Ok((
        handshake,
        tools.iter().map(|t| t.name.to_string()).collect(),
    ))
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
