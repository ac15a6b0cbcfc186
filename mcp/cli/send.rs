//! `send` and `broadcast`: a message from a person or a script, checked exactly as the
//! tools check it. The sender is no live session: nothing is added to `heartbeats.json`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::Local;
use clap::Args;
use t9_ipc::config::Config;
use t9_ipc::heartbeat::Heartbeats;
use t9_ipc::message::BROADCAST;
use t9_ipc::session::{Outgoing, Sent, send_from};

use super::{UsageError, open_mailbox};

/// The sender name when `--from` is not given: a person at a terminal.
pub const DEFAULT_FROM: &str = "human";

// Kept at its old path until the server imports it from `shared`.
pub use crate::shared::PriorityArg;

/// Where the body comes from; at most one of them.
#[derive(Debug, Args)]
pub struct BodyArgs {
    /// The body (markdown, at most 64 KiB); `-` reads it from stdin.
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
    /// One line, at most 200 characters.
    pub subject: String,
    #[command(flatten)]
    pub body: BodyArgs,
    /// The sender's name, as the recipient sees it and answers it.
    #[arg(long, default_value = DEFAULT_FROM, value_name = "NAME")]
    pub from: String,
    #[arg(long, value_enum, default_value_t)]
    pub priority: PriorityArg,
    /// The msg_id of the message this one answers.
    #[arg(long, value_name = "ID")]
    pub reply_to: Option<String>,
}

/// `t9-ipc broadcast`.
#[derive(Debug, Args)]
#[command(after_help = "Example, from a CI job:
  t9-ipc broadcast --from ci-bot \"main is red\" \"build 812 failed: https://ci.example/812\"")]
pub struct BroadcastArgs {
    /// One line, at most 200 characters.
    pub subject: String,
    #[command(flatten)]
    pub body: BodyArgs,
    /// The sender's name, as the sessions see it and answer it.
    #[arg(long, default_value = DEFAULT_FROM, value_name = "NAME")]
    pub from: String,
    #[arg(long, value_enum, default_value_t)]
    pub priority: PriorityArg,
}

pub fn send(args: SendArgs, config: &Config) -> anyhow::Result<()> {
    let body = args.body.read()?;
    deliver(
        config,
        &args.from,
        &args.to,
        &args.subject,
        &body,
        args.priority,
        args.reply_to.as_deref(),
    )
}

pub fn broadcast(args: BroadcastArgs, config: &Config) -> anyhow::Result<()> {
    let body = args.body.read()?;
    deliver(
        config,
        &args.from,
        BROADCAST,
        &args.subject,
        &body,
        args.priority,
        None,
    )
}

fn deliver(
    config: &Config,
    from: &str,
    to: &str,
    subject: &str,
    body: &str,
    priority: PriorityArg,
    reply_to: Option<&str>,
) -> anyhow::Result<()> {
    if let Err(why) = t9_ipc::message::check_name(from).or_else(|why| {
        // `human` (the default) is the person at this terminal.
        if t9_ipc::message::is_human(from) {
            Ok(())
        } else {
            Err(why)
        }
    }) {
        return Err(UsageError(format!("--from: {why}")).into());
    }
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
    let sent = send_from(&mailbox, &heartbeats, from, &out, Local::now())
        .map_err(|err| anyhow::anyhow!("not sent: {err}"))?;
    println!("{}", sent.id);
    eprintln!("t9-ipc: {}", describe(&sent));
    Ok(())
}

/// What a send did, for the person who sent it.
fn describe(sent: &Sent) -> String {
    let others = |none: &str| {
        if sent.others.is_empty() {
            none.to_owned()
        } else {
            format!("online: {}", sent.others.join(", "))
        }
    };
    if sent.to == BROADCAST {
        return if sent.others.is_empty() {
            "broadcast saved; no session is online (sessions that start later do not get it)"
                .to_owned()
        } else {
            format!(
                "broadcast to {} live session{} ({})",
                sent.others.len(),
                if sent.others.len() == 1 { "" } else { "s" },
                sent.others.join(", ")
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
