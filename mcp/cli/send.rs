//! `send` and `broadcast`: a message from a person or a script, checked exactly as the
//! tools check it. The sender is no live session: nothing is added to `heartbeats.json`.
//!
//! Senders are honest where the command line can make them so: no reserved name (only
//! t9-ipc itself writes as `telegram` or `system`), and inside a Claude Code session the
//! sender is that session, never `human`: a model's own Bash tool must not speak as the user.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::Local;
use clap::Args;
use t9_ipc::config::Config;
use t9_ipc::heartbeat::Heartbeats;
use t9_ipc::message::{BROADCAST, HUMAN, check_name, is_human};
use t9_ipc::session::{Outgoing, Sent, send_from};
use t9_ipc::text::plural;

use super::{UsageError, enclosing_sessions, open_mailbox, style};

/// The sender name when `--from` is not given: a person at a terminal.
pub const DEFAULT_FROM: &str = "human";

/// Sender names the command line never writes: the person's replies from Telegram, t9-ipc's
/// own notices, and the addresses of everyone.
const RESERVED_SENDERS: [&str; 4] = ["telegram", "system", "all", "broadcast"];

// Kept at its old path until the server imports it from `shared`.
use crate::shared::PriorityArg;

/// Where the body comes from; at most one of them.
#[derive(Debug, Args)]
pub struct BodyArgs {
    /// The body (markdown, at most 64 KiB); `-` reads it from stdin (which must not be empty).
    #[arg(value_name = "BODY", group = "body_source")]
    body_arg: Option<String>,
    /// The body as one argument (taken as it is, also when it is `-`).
    #[arg(long, value_name = "TEXT", group = "body_source")]
    body: Option<String>,
    /// Read the body from a file (`-` for stdin).
    #[arg(long, value_name = "FILE", group = "body_source")]
    body_file: Option<PathBuf>,
}

impl BodyArgs {
    /// The body text; empty when none was given (stdin is read only when asked for).
    fn read(self) -> anyhow::Result<String> {
        let stdin = || -> anyhow::Result<String> {
            if std::io::stdin().is_terminal() {
                eprintln!("t9-ipc: reading the body from the terminal; end it with Ctrl-D");
            }
            let mut body = String::new();
            std::io::stdin()
                .read_to_string(&mut body)
                .context("reading the body from stdin (it must be UTF-8 text)")?;
            // `-` asks for a body: nothing there is a broken pipe or a wrong path upstream,
            // not a message meant to be empty.
            if body.trim().is_empty() {
                return Err(UsageError(
                    "`-` reads the body from stdin, but stdin was empty; pipe the body in, or \
                     leave `-` out to send the subject alone"
                        .to_owned(),
                )
                .into());
            }
            Ok(body)
        };
        match (self.body_arg, self.body, self.body_file) {
            (Some(arg), _, _) if arg == "-" => stdin(),
            (Some(text), _, _) | (_, Some(text), _) => Ok(text),
            (_, _, Some(path)) if path.as_os_str() == "-" => stdin(),
            (_, _, Some(path)) => std::fs::read_to_string(&path)
                .with_context(|| format!("reading the body from {}", path.display())),
            (None, None, None) => Ok(String::new()),
        }
    }
}

/// `t9-ipc send`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  t9-ipc send reviewer \"API changed\" \"see docs/api.md\"
  git diff | t9-ipc send reviewer \"please review\" -
  t9-ipc send beta \"re: parser\" --reply-to 20260406T153000123456-0a1b2c3d-beta-human-parser --body ok

Prints the msg_id on stdout (for scripts) and what happened on stderr.")]
pub struct SendArgs {
    /// The recipient's session name (`t9-ipc who` lists them); `all` for everyone.
    pub to: String,
    #[command(flatten)]
    pub message: MessageArgs,
    /// The msg_id of the message this one answers.
    #[arg(long, value_name = "ID")]
    pub reply_to: Option<String>,
}

/// `t9-ipc broadcast`.
#[derive(Debug, Args)]
#[command(after_help = "Example, from a CI job:
  t9-ipc broadcast --from ci-bot \"main is red\" \"build 812 failed: https://ci.example/812\"")]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub message: MessageArgs,
}

/// What `send` and `broadcast` both take: the message and its sender.
#[derive(Debug, Args)]
pub struct MessageArgs {
    /// One line, at most 200 characters.
    pub subject: String,
    #[command(flatten)]
    pub body: BodyArgs,
    /// The sender's name, as the recipients see it and answer it [default: human; inside a
    /// Claude Code session: that session, and no other name is accepted].
    #[arg(long, value_name = "NAME")]
    pub from: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub priority: PriorityArg,
}

pub fn send(args: SendArgs, config: &Config) -> anyhow::Result<()> {
    deliver(config, &args.to, args.message, args.reply_to.as_deref())
}

pub fn broadcast(args: BroadcastArgs, config: &Config) -> anyhow::Result<()> {
    deliver(config, BROADCAST, args.message, None)
}

fn deliver(
    config: &Config,
    to: &str,
    message: MessageArgs,
    reply_to: Option<&str>,
) -> anyhow::Result<()> {
    let from = sender(config, message.from.as_deref())?;
    let from = from.as_str();
    let body = message.body.read()?;
    let (subject, body, priority) = (message.subject.as_str(), body.as_str(), message.priority);
    let mailbox = open_mailbox(config)?;
    let heartbeats = Heartbeats::new(&config.data_dir);
    let out = Outgoing {
        to,
        subject,
        body,
        priority: priority.into(),
        reply_to,
        ..Outgoing::default()
    };
    let sent = send_from(&mailbox, &heartbeats, from, &out, Local::now()).map_err(|err| {
        // The library words its refusals for the tools; a person runs `t9-ipc who`.
        let why = err.to_string().replace("t9_ipc_who", "`t9-ipc who`");
        anyhow::anyhow!("not sent: {why}")
    })?;
    println!("{}", sent.id);
    eprintln!("t9-ipc: {}", describe(&sent, from, config));
    Ok(())
}

/// The name this command sends as: `--from` when it is allowed, else the default.
fn sender(config: &Config, from: Option<&str>) -> anyhow::Result<String> {
    let refuse = |why: String| -> anyhow::Result<String> { Err(UsageError(why).into()) };
    if let Some(from) = from {
        let trimmed = from.trim();
        if let Some(word) = RESERVED_SENDERS
            .iter()
            .find(|r| trimmed.eq_ignore_ascii_case(r))
        {
            return refuse(format!(
                "--from {:?} is refused: \"{word}\" is reserved (only t9-ipc itself writes \
                 the user's Telegram replies and its own notices; \"all\" and \"broadcast\" \
                 address everyone); give your own name",
                style::line(from)
            ));
        }
        if !is_human(trimmed) {
            check_name(trimmed).map_err(|why| UsageError(format!("--from: {why}")))?;
        }
    }
    let from = from.map(str::trim);
    let live = Heartbeats::new(&config.data_dir).live(Local::now());
    let Some((pid, mut sessions)) = enclosing_sessions(&live) else {
        // No t9-ipc session runs above this process: a person at a terminal, or a script.
        return match from {
            Some(name) if !is_human(name) => Ok(name.to_owned()),
            _ if config.inside_claude_code => refuse(
                "this command runs inside Claude Code (CLAUDECODE is set) but no t9-ipc \
                 session of it is live, so it cannot send as \"human\": a model's own Bash \
                 tool must not speak as the user. Give --from <a name for this session>"
                    .to_owned(),
            ),
            _ => Ok(DEFAULT_FROM.to_owned()),
        };
    };
    if sessions.len() > 1 {
        // Two MCP entries in one Claude Code: the folder may tell them apart.
        let cwd = config.cwd.display().to_string();
        let here: Vec<String> = sessions
            .iter()
            .filter(|n| live[n.as_str()].cwd.as_deref() == Some(cwd.as_str()))
            .cloned()
            .collect();
        if here.len() == 1 {
            sessions = here;
        }
    }
    match (from, sessions.as_slice()) {
        (None, [own]) => Ok(own.clone()),
        (Some(name), _) if sessions.iter().any(|s| s == name) => Ok(name.to_owned()),
        (None, _) => refuse(format!(
            "this command runs inside a Claude Code session with several t9-ipc sessions \
             ({}; started by process {pid}); give --from with one of them",
            style::line(&sessions.join(", "))
        )),
        (Some(name), _) => refuse(format!(
            "--from {:?} is refused: this command runs inside the Claude Code session {} \
             (its t9-ipc server and this command were started by process {pid}), so it sends \
             as that session. A model's own Bash tool must not speak as the user or as \
             another session; leave --from out",
            style::line(name),
            style::line(&sessions.join(" or ")),
        )),
    }
}

/// What a send did, for the person who sent it.
fn describe(sent: &Sent, from: &str, config: &Config) -> String {
    let others = |none: &str| {
        if sent.others.is_empty() {
            none.to_owned()
        } else {
            format!("online: {}", style::line(&sent.others.join(", ")))
        }
    };
    if sent.to == HUMAN {
        // As the send tool says it; the command line forwards nothing itself: a running
        // server with Telegram set up offers every escalation it sees.
        let saved = format!("saved for the user (`t9-ipc inbox {HUMAN}` lists it)");
        let forwarding = config.telegram.as_ref().is_some_and(|t| t.chat.is_some());
        return if is_human(from) {
            format!("{saved}; what \"{HUMAN}\" sends is never forwarded to Telegram")
        } else if !forwarding {
            format!(
                "{saved}, but Telegram is not set up here (IPC_TG_TOKEN, IPC_TG_CHAT), so \
                 nobody was notified; tell the user directly"
            )
        } else if Heartbeats::new(&config.data_dir)
            .live(Local::now())
            .is_empty()
        {
            format!(
                "{saved}; no t9-ipc session runs now, so it goes to Telegram when the next one \
                 starts (within 24 hours)"
            )
        } else {
            format!(
                "escalated: {saved}, and a running t9-ipc session sends it to the user on \
                 Telegram; an answer comes from \"telegram\" with reply_to {}",
                sent.id
            )
        };
    }
    if sent.to == BROADCAST {
        return if sent.others.is_empty() {
            "broadcast saved; no session is online (sessions that start later do not get it)"
                .to_owned()
        } else {
            format!(
                "broadcast to {} ({})",
                plural(sent.others.len(), "live session"),
                style::line(&sent.others.join(", "))
            )
        };
    }
    match &sent.recipient {
        Some(entry) => format!("sent to {} (live, pid {})", sent.to, entry.pid),
        None => format!(
            "saved, but no live session is named {} ({}); it waits in the inbox until one starts",
            sent.to,
            others("no session is online")
        ),
    }
}
