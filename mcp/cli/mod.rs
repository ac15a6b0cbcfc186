//! Subcommands for people and scripts: everything but `serve`. These print to stdout on
//! purpose; errors go to stderr as one line (see `main`).

pub mod archive;
pub mod doctor;
pub mod hook;
pub mod inbox;
pub mod install;
pub mod send;
pub mod style;
pub mod tail;
pub mod telegram;
pub mod who;

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rmcp::ServiceExt;
use rmcp::transport::TokioChildProcess;
use t9_ipc::config::Config;
use t9_ipc::mailbox::Mailbox;
use tokio::process::Command;

/// `t9-ipc where`: the mailbox root, alone on a line, for scripts.
pub fn where_is(config: &Config) -> anyhow::Result<()> {
    println!("{}", config.data_dir.display()); // stdout-ok
    Ok(())
}

/// `t9-ipc setup`: checks the mailbox, starts `t9-ipc serve` on a scratch mailbox and talks
/// MCP to it, then prints the lines that add the server to Claude Code.
pub async fn setup(config: &Config) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let mailbox = Mailbox::open(&config.data_dir)
        .with_context(|| format!("opening the mailbox {}", config.data_dir.display()))?;
    println!("t9-ipc {} at {}", env!("CARGO_PKG_VERSION"), exe.display()); // stdout-ok
    println!(
        "mailbox: {} ({})", // stdout-ok
        mailbox.root().display(),
        config.data_dir_source.describe()
    );

    let scratch = tempfile::tempdir().context("making a scratch mailbox")?;
    let mut cmd = Command::new(&exe);
    cmd.arg("serve")
        .env("IPC_DATA_DIR", scratch.path())
        .env("IPC_SESSION_ID", "setup-check")
        // The check must not join the user's Telegram bot (it would read their replies into
        // the scratch mailbox).
        .env_remove("IPC_TG_TOKEN");
    let started = Instant::now();
    let transport = TokioChildProcess::new(cmd).context("starting `t9-ipc serve`")?;
    let client = tokio::time::timeout(Duration::from_secs(10), ().serve(transport))
        .await
        .context("`t9-ipc serve` did not answer within 10 s")?
        .context("the MCP handshake with `t9-ipc serve` failed")?;
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
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    println!(
        // stdout-ok
        "self-check: `t9-ipc serve` answered in {} ms, declares claude/channel, tools: {}",
        handshake.as_millis(),
        names.join(", ")
    );
    let exe = exe.display();
    println!(
        // stdout-ok
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

/// A mistake in how a command was called: exit code 2, like clap's own usage errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Opens the mailbox of `config`, naming it in the error.
pub fn open_mailbox(config: &Config) -> anyhow::Result<Mailbox> {
    Mailbox::open(&config.data_dir)
        .with_context(|| format!("opening the mailbox {}", config.data_dir.display()))
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
