//! `search`: a session's mail (inbox and archive) by words, correspondent or thread, newest
//! first, with receipts for what it sent.

use anyhow::{Context as _, bail};
use chrono::Local;
use clap::Args;
use t9_ipc::config::Config;
use t9_ipc::coord::search::{self, Query};
use t9_ipc::heartbeat::Heartbeats;

use super::{UsageError, open_mailbox, this_session};

/// `t9-ipc search`.
#[derive(Debug, Args)]
#[command(
    after_help = "Searches the mail the session sent and received, in inbox/ and archive/. \
For messages it sent, each shows whether the recipient had it pushed, read or answered."
)]
pub struct SearchArgs {
    /// Words that must all appear in the subject or body (case-insensitive).
    pub words: Vec<String>,
    /// Whose mail: a session name (default: the session this command runs under, or the only
    /// live session started in this folder).
    #[arg(long = "as", value_name = "NAME")]
    pub name: Option<String>,
    /// Only messages from or to this session.
    #[arg(long, value_name = "NAME")]
    pub with: Option<String>,
    /// Only the thread (reply_to chain) of this msg_id.
    #[arg(long, value_name = "MSG_ID")]
    pub thread: Option<String>,
    /// At most this many messages (default 20, at most 100).
    #[arg(long, default_value_t = search::DEFAULT_LIMIT)]
    pub limit: usize,
    /// Print JSON: one object per message, with its receipts.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: SearchArgs, config: &Config) -> anyhow::Result<()> {
    let mailbox = open_mailbox(config)?;
    let name = match args.name {
        Some(name) => name,
        None => {
            let live = Heartbeats::new(&config.data_dir).live(Local::now());
            let cwd = config.cwd.to_string_lossy().into_owned();
            match this_session(config, &live, Some(&cwd)) {
                Some((name, _)) => name,
                None => bail!(UsageError(
                    "which session's mail? pass --as <name> (t9-ipc who lists them)".to_owned()
                )),
            }
        }
    };
    let query = Query {
        words: args.words,
        with: args.with,
        thread: args.thread,
        limit: args.limit,
    };
    let found = search::search(&mailbox, &name, &query, Local::now())
        .with_context(|| format!("searching the mail of {name:?}"))?;
    if args.json {
        let rows: Vec<serde_json::Value> = found
            .hits
            .iter()
            .map(|h| {
                let f = &h.message.front;
                serde_json::json!({
                    "msg_id": h.message.id, "from": f.from, "to": f.to, "subject": f.subject,
                    "created": f.created, "reply_to": f.reply_to, "archived": h.archived,
                    "body": h.message.body,
                    "receipts": h.receipts.iter().map(|r| serde_json::json!({
                        "to": r.to, "pushed": r.pushed, "read": r.read,
                        "pushed_at": r.pushed_at, "read_at": r.read_at,
                        "answered": r.answered.as_ref().map(|(id, at)| serde_json::json!({"msg_id": id, "created": at})),
                        "status": r.describe(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = serde_json::json!({"session": name, "messages": rows, "more": found.more});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", crate::shared::coord::format_found(&found));
    }
    Ok(())
}
