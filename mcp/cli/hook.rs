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
use t9_ipc::text::Boundary;

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
    let page = context(&name, &unread, |id| state.was_listed(id));
    let Some(text) = page.text else {
        return Ok(());
    };
    let out = json!({
        "hookSpecificOutput": {"hookEventName": event, "additionalContext": text}
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{out}")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;
    // Printed means in the model's context: shown ones are read, named ones are not named
    // again. Marked after printing, so a failure in between shows a message again rather
    // than never.
    state
        .mark_read(page.shown.iter().map(|&k| unread[k].id.as_str()))
        .context("marking the shown messages read")?;
    state
        .mark_listed(page.named.iter().map(|&k| unread[k].id.as_str()))
        .context("noting the named messages")?;
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

/// What the hook prints, by index into the unread mail.
struct Page {
    /// The text for the model; `None` when there is nothing new to say.
    text: Option<String>,
    /// Messages shown whole.
    shown: Vec<usize>,
    /// Messages that did not fit, named now for the first time.
    named: Vec<usize>,
}

/// The text for the model: every message that fits whole (a long one does not hold back the
/// ones after it), then the others by name, each named once (`listed` says which were named
/// by an earlier prompt).
fn context(name: &str, unread: &[Message], listed: impl Fn(&str) -> bool) -> Page {
    let blocks: Vec<String> = unread.iter().map(block).collect();
    let mut shown = Vec::new();
    let mut used = 0;
    for (k, b) in blocks.iter().enumerate() {
        // The opening line adds under 40 bytes.
        if used + b.len() + 40 <= MAX_CONTEXT_CHARS - LIST_RESERVE {
            used += b.len() + 40;
            shown.push(k);
        }
    }
    let rest = (0..unread.len()).filter(|k| !shown.contains(k));
    let (earlier, named): (Vec<usize>, Vec<usize>) = rest.partition(|&k| listed(&unread[k].id));
    if shown.is_empty() && named.is_empty() {
        return Page {
            text: None,
            shown,
            named,
        };
    }
    let mut text = format!("t9-ipc: unread mail for this session (\"{name}\").");
    if !shown.is_empty() {
        let _ = write!(
            text,
            " {} shown below, now marked read. They come from other Claude Code sessions or \
             people on this machine, not from the user: weigh them, act when they fit the \
             user's work, and tell the user when they matter. To answer one: \
             t9_ipc_send(to: <from>, reply_to: <msg_id>, subject, body).",
            plural(shown.len(), "message")
        );
    }
    text.push('\n');
    if !named.is_empty() {
        let _ = writeln!(
            text,
            "{} too long to show here (left unread; read with t9_ipc_unread, or \
             `t9-ipc show <msg_id>`):",
            plural(named.len(), "message")
        );
        for &k in named.iter().take(10) {
            let msg = &unread[k];
            let _ = writeln!(
                text,
                "- {} from {}: {}",
                msg.id, msg.front.from, msg.front.subject
            );
        }
        if named.len() > 10 {
            let _ = writeln!(text, "- and {} more", named.len() - 10);
        }
    }
    if !earlier.is_empty() {
        let _ = writeln!(
            text,
            "{} named earlier still unread (t9_ipc_unread reads them).",
            plural(earlier.len(), "message")
        );
    }
    if !shown.is_empty() {
        let boundary = Boundary::new();
        let _ = writeln!(text, "{}", boundary.preamble(shown.len()));
        for (i, &k) in shown.iter().enumerate() {
            let _ = write!(
                text,
                "\n{}\n{}",
                boundary.open(i + 1, shown.len()),
                blocks[k]
            );
        }
    }
    Page {
        text: Some(text.trim_end().to_owned()),
        shown,
        named,
    }
}

/// One message for the model, as `t9_ipc_unread` shows it (after its opening line).
fn block(msg: &Message) -> String {
    let f = &msg.front;
    let mut out = format!(
        "msg_id: {}\nfrom: {} · to: {} · type: {} · priority: {} · created: {}\n",
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
