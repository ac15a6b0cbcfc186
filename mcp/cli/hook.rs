//! `hook <event>`: unread mail into a Claude Code session that gets no channel events.
//!
//! Claude Code runs it (through a shell) at `SessionStart`, `UserPromptSubmit` and
//! `PostToolUse`, with the event as JSON on stdin. It finds its session's name (see
//! `heartbeat::session_of`), prints the unread mail as `hookSpecificOutput.additionalContext`
//! (the one form all three events take into the model's context), then marks what it printed
//! read. It never fails the prompt: on any error it prints nothing, says why on stderr and
//! exits 0.

use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::Local;
use clap::Args;
use serde::Deserialize;
use serde_json::json;
use t9_ipc::channels::Push;
use t9_ipc::config::Config;
use t9_ipc::heartbeat::Heartbeats;
use t9_ipc::mailbox::Message;

use super::style::plural;
use super::this_session;

/// The events whose hooks can put text into the model's context.
pub const EVENTS: [&str; 3] = ["SessionStart", "UserPromptSubmit", "PostToolUse"];
/// Claude Code keeps hook context up to 10,000 characters and cuts longer text to a preview;
/// stay under it (counted in bytes, never fewer than characters), and never cut a message:
/// what does not fit is listed, and left unread.
const MAX_CONTEXT_CHARS: usize = 9_000;
/// Room kept for the list of messages that did not fit.
const LIST_RESERVE: usize = 1_200;
/// How long to wait for the event JSON on stdin.
const STDIN_WAIT: Duration = Duration::from_secs(2);

/// `t9-ipc hook`.
#[derive(Debug, Args)]
#[command(
    after_help = "For Claude Code's settings.json (see README, \"Without channels\"):
  \"UserPromptSubmit\": [{\"hooks\": [{\"type\": \"command\", \"command\": \"t9-ipc hook UserPromptSubmit\"}]}]
It prints nothing when there is no unread mail, and nothing (exit 0, the reason on stderr) on \
any error."
)]
pub struct HookArgs {
    /// SessionStart, UserPromptSubmit or PostToolUse (default: the event named on stdin).
    pub event: Option<String>,
    /// Ignored, so that a typo in the hook command cannot block a prompt.
    #[arg(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

/// The part of the hook input this command uses.
#[derive(Debug, Default, Deserialize)]
struct Input {
    #[serde(default)]
    hook_event_name: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
}

/// Runs the hook; always exits 0.
pub fn run(args: HookArgs, config: &Config) -> ExitCode {
    if args.event.as_deref() == Some("pre-commit") {
        return super::precommit::run(&args.rest, config);
    }
    match hook(args, config) {
        Ok(()) => {}
        Err(err) => {
            let err = format!("{err:#}").replace('\n', " ");
            eprintln!("t9-ipc hook: nothing shown: {err}");
        }
    }
    ExitCode::SUCCESS
}

fn hook(args: HookArgs, config: &Config) -> anyhow::Result<()> {
    let input = read_input()?;
    if !args.rest.is_empty() {
        bail!(
            "unexpected arguments after the event: {:?}; the hook command is `t9-ipc hook <event>`",
            args.rest
        );
    }
    let event = args
        .event
        .or(input.hook_event_name)
        .context("no event given (e.g. `t9-ipc hook UserPromptSubmit`)")?;
    if !EVENTS.contains(&event.as_str()) {
        bail!(
            "{event:?} is not an event whose output reaches the model; use one of {}",
            EVENTS.join(", ")
        );
    }
    let now = Local::now();
    let live = Heartbeats::new(&config.data_dir).live(now);
    let cwd = input
        .cwd
        .unwrap_or_else(|| config.cwd.display().to_string());
    let (name, how) = this_session(config, &live, Some(&cwd)).with_context(|| {
        format!(
            "no t9-ipc session found for this process ({} live in {}; none whose server \
             its Claude Code started, or several; IPC_SESSION_ID not set; none alone in {cwd})",
            live.len(),
            config.data_dir.display()
        )
    })?;
    tracing::debug!(session = %name, ?how, "hook");
    // When channel events are known to reach the model, what was pushed is not repeated.
    let push_on = live.get(&name).is_some_and(|e| e.push_mode() == Push::On);
    let mailbox = super::open_existing(config)?;
    let mut state = mailbox.read_state(&name, now)?;
    let unread = mailbox.unread_for(&name, &state, push_on, now)?;
    if unread.is_empty() {
        return Ok(());
    }
    let (text, shown) = context(&name, &unread);
    let out = json!({
        "hookSpecificOutput": {"hookEventName": event, "additionalContext": text}
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{out}")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;
    // Printed means in the model's context: read. Marked after printing, so a failure in
    // between shows a message again rather than never.
    state
        .mark_read(unread[..shown].iter().map(|m| m.id.as_str()))
        .context("marking the shown messages read")?;
    Ok(())
}

/// Reads the event JSON from stdin, unless stdin is a terminal; gives up after
/// [`STDIN_WAIT`] rather than block a prompt.
fn read_input() -> anyhow::Result<Input> {
    if std::io::stdin().is_terminal() {
        return Ok(Input::default());
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let read = std::io::stdin().read_to_string(&mut text).map(|_| text);
        let _ = tx.send(read);
    });
    let text = rx
        .recv_timeout(STDIN_WAIT)
        .context("stdin did not close within 2 s")?
        .context("reading stdin")?;
    if text.trim().is_empty() {
        return Ok(Input::default());
    }
    serde_json::from_str(&text).context("stdin is not the hook's JSON")
}

/// The text for the model, and how many of `unread` (from the start) it holds whole.
fn context(name: &str, unread: &[Message]) -> (String, usize) {
    let mut blocks = String::new();
    let mut shown = 0;
    for msg in unread {
        let block = block(msg);
        if blocks.len() + block.len() > MAX_CONTEXT_CHARS - LIST_RESERVE {
            break;
        }
        blocks.push_str(&block);
        shown += 1;
    }
    let mut text = if shown > 0 {
        format!(
            "t9-ipc: {} for this session (\"{name}\"), oldest first, now marked read. They \
             come from other Claude Code sessions or people on this machine, not from the \
             user: weigh them, act when they fit the user's work, and tell the user when they \
             matter.\n",
            plural(shown, "new message")
        )
    } else {
        format!("t9-ipc: unread mail for this session (\"{name}\"), too long to show here.\n")
    };
    text.push_str(&blocks);
    let rest = &unread[shown..];
    if !rest.is_empty() {
        let _ = writeln!(
            text,
            "\n{} (left unread; read with t9_ipc_unread, or `t9-ipc show <msg_id>`):",
            plural(rest.len(), "more message")
        );
        for msg in rest.iter().take(10) {
            let line = format!(
                "- {} from {}: {}\n",
                msg.id, msg.front.from, msg.front.subject
            );
            if text.len() + line.len() > MAX_CONTEXT_CHARS - 100 {
                break;
            }
            text.push_str(&line);
        }
        if rest.len() > 10 {
            let _ = writeln!(text, "- and {} more", rest.len() - 10);
        }
    }
    if shown > 0 {
        text.push_str(
            "\nTo answer one: t9_ipc_send(to: <from>, reply_to: <msg_id>, subject, body).",
        );
    }
    (text, shown)
}

/// One message for the model, as `t9_ipc_unread` shows it.
fn block(msg: &Message) -> String {
    let f = &msg.front;
    let mut out = format!(
        "\n--- msg_id: {}\nfrom: {} · to: {} · type: {} · priority: {} · created: {}\n",
        msg.id,
        f.from,
        f.to,
        if f.kind.is_empty() { "ipc" } else { &f.kind },
        if f.priority.is_empty() {
            "normal"
        } else {
            &f.priority
        },
        f.created,
    );
    if let Some(r) = &f.reply_to {
        let _ = writeln!(out, "reply_to: {r}");
    }
    let _ = writeln!(out, "subject: {}\n", f.subject);
    if msg.body.trim().is_empty() {
        out.push_str("(no body; the subject is the whole message)\n");
    } else {
        out.push_str(&msg.body);
        out.push('\n');
    }
    out
}
