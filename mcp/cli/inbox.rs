//! `inbox` and `show`: messages for a name, and one message whole.

use std::sync::Arc;

use chrono::{DateTime, Local};
use clap::Args;
use serde_json::Value;
use t9_ipc::config::Config;
use t9_ipc::heartbeat::{FoundBy, Heartbeats};
use t9_ipc::mailbox::{Mailbox, Message, ReadState};
use t9_ipc::message::HUMAN;

use super::style::{self, Style, plural};
use super::{UsageError, open_existing, this_session};

/// `t9-ipc inbox`.
#[derive(Debug, Args)]
#[command(
    after_help = "Without NAME: the session this command runs in (when Claude Code runs \
it), or the one IPC_SESSION_ID names; otherwise every message in the inbox.
`t9-ipc inbox human` lists the messages to you, the person (replies to what you sent).
Unread messages are marked `*`. `t9-ipc show <msg_id>` prints one whole."
)]
pub struct InboxArgs {
    /// Whose messages: a session name (direct messages to it and broadcasts), or `human`.
    pub name: Option<String>,
    /// Only the messages NAME has not read.
    #[arg(long)]
    pub unread: bool,
    /// Print JSON (with the bodies) instead of a list.
    #[arg(long)]
    pub json: bool,
    /// Mark the listed messages read for NAME.
    #[arg(long)]
    pub mark_read: bool,
}

pub fn inbox(args: InboxArgs, config: &Config) -> anyhow::Result<()> {
    let now = Local::now();
    let name = whose_inbox(args.name.clone(), config, now)?;
    if name.is_none() && (args.unread || args.mark_read) {
        return Err(UsageError(
            "--unread and --mark-read need a NAME (no session runs this command and \
             IPC_SESSION_ID is not set)"
                .to_owned(),
        )
        .into());
    }
    let mailbox = open_existing(config)?;
    let all = mailbox.scan()?;
    let Some((name, how)) = name else {
        print_everything(&all, &mailbox, args.json);
        return Ok(());
    };
    let mut state: ReadState = if args.mark_read {
        mailbox.read_state(&name, now)?
    } else {
        mailbox.peek_state(&name, now)?
    };
    let listed: Vec<(&Arc<Message>, bool)> = all
        .iter()
        .filter(|m| m.front.is_for(&name))
        .map(|m| (m, state.is_unread(&name, m, now)))
        .filter(|(_, unread)| !args.unread || *unread)
        .collect();
    if args.json {
        print_json(&listed);
    } else {
        print_list(&listed, &name, how, args.unread);
    }
    if args.mark_read {
        let ids: Vec<&str> = listed
            .iter()
            .filter(|(_, unread)| *unread)
            .map(|(m, _)| m.id.as_str())
            .collect();
        state.mark_read(ids.iter().copied())?;
        eprintln!(
            "t9-ipc: marked {} read for {}",
            plural(ids.len(), "message"),
            style::line(&name)
        );
    }
    Ok(())
}

/// The name whose mail `inbox` lists, and how it was found; none for every message.
fn whose_inbox(
    name: Option<String>,
    config: &Config,
    now: DateTime<Local>,
) -> anyhow::Result<Option<(String, Option<FoundBy>)>> {
    Ok(match name {
        // The person's mail: escalations and replies to what they sent.
        Some(name) if t9_ipc::message::is_human(&name) => Some((HUMAN.to_owned(), None)),
        Some(name) => {
            t9_ipc::message::check_name(&name).map_err(UsageError)?;
            Some((name, None))
        }
        None => {
            let live = Heartbeats::new(&config.data_dir).live(now);
            this_session(config, &live, None).map(|(name, how)| (name, Some(how)))
        }
    })
}

/// Every message in the inbox, whoever it is for.
fn print_everything(all: &[Arc<Message>], mailbox: &Mailbox, json: bool) {
    let style = Style::stdout();
    if json {
        let list: Vec<Value> = all.iter().map(|m| style::json(m)).collect();
        println!("{}", style::json_text(&Value::Array(list)));
        return;
    }
    println!(
        "{} in {}:",
        plural(all.len(), "message"),
        mailbox.inbox().display()
    );
    for msg in all {
        println!(
            "  {}\n    {}",
            style::headline(msg, style),
            style.dim(&style::line(&msg.id))
        );
    }
}

fn print_json(listed: &[(&Arc<Message>, bool)]) {
    let list: Vec<Value> = listed
        .iter()
        .map(|(m, unread)| {
            let mut v = style::json(m);
            v["unread"] = Value::Bool(*unread);
            v
        })
        .collect();
    println!("{}", style::json_text(&Value::Array(list)));
}

/// One name's messages, `*` marking the unread ones.
fn print_list(
    listed: &[(&Arc<Message>, bool)],
    name: &str,
    how: Option<FoundBy>,
    only_unread: bool,
) {
    let style = Style::stdout();
    let shown = style::line(name);
    let whose = match how {
        Some(FoundBy::Ancestor(_)) => format!("{shown} (the session this command runs in)"),
        Some(FoundBy::Env) => format!("{shown} (IPC_SESSION_ID)"),
        _ if name == HUMAN => format!("{HUMAN} (you)"),
        _ => shown.into_owned(),
    };
    let count = listed.iter().filter(|(_, unread)| *unread).count();
    if only_unread {
        println!("{} for {whose}:", plural(count, "unread message"));
    } else {
        println!(
            "{} for {whose}, {count} unread (*):",
            plural(listed.len(), "message")
        );
    }
    for (msg, unread) in listed {
        let mark = if *unread { "*" } else { " " };
        println!(
            "{mark} {}\n    {}",
            style::headline(msg, style),
            style.dim(&style::line(&msg.id))
        );
    }
}

/// `t9-ipc show`.
#[derive(Debug, Args)]
#[command(
    after_help = "The id may be cut short when the start is unique. Shows messages in \
inbox/ and archive/; it marks nothing read."
)]
pub struct ShowArgs {
    /// The msg_id (or its unique start).
    pub id: String,
    /// Print JSON instead.
    #[arg(long)]
    pub json: bool,
}

pub fn show(args: ShowArgs, config: &Config) -> anyhow::Result<()> {
    let mailbox = open_existing(config)?;
    let id = args.id.trim();
    let found = match mailbox.find(id)? {
        Some(found) => found,
        None => {
            let ids = mailbox.ids_starting_with(id.strip_suffix(".md").unwrap_or(id))?;
            match ids.as_slice() {
                [one] => mailbox.find(one)?.ok_or_else(|| {
                    anyhow::anyhow!("{} went away while reading it", style::line(one))
                })?,
                [] => anyhow::bail!("no message {id:?} in inbox/ or archive/"),
                many => anyhow::bail!(
                    "{id:?} starts {} ids ({}, …); give more of it",
                    many.len(),
                    style::line(&many[0])
                ),
            }
        }
    };
    let (msg, folder) = found;
    if args.json {
        let mut v = style::json(&msg);
        v["folder"] = Value::from(folder);
        println!("{}", style::json_text(&v));
    } else {
        print!("{}", style::full(&msg, Some(folder)));
    }
    Ok(())
}
