//! `tail`: follow the mailbox live. Event-driven: the inbox folder's file-system events are
//! hints to rescan it (the `watch` module), so an idle `tail` uses no CPU.

use std::collections::HashSet;
use std::io::Write;

use anyhow::Context as _;
use clap::Args;
use t9_ipc::config::Config;
use t9_ipc::watch;

use super::open_existing;
use super::style::{self, Style};

/// `t9-ipc tail`.
#[derive(Debug, Args)]
#[command(
    after_help = "Prints each new message with its body as it arrives, until Ctrl-C. \
Colour on a terminal only (never with NO_COLOR set). It marks nothing read."
)]
pub struct TailArgs {
    /// Only messages NAME receives: sent to it, and broadcasts it did not send.
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,
}

pub async fn run(args: TailArgs, config: &Config) -> anyhow::Result<()> {
    let mailbox = open_existing(config)?;
    // Watch before the first scan, so that nothing written in between is missed.
    let (_watcher, mut events) = watch::watch_messages(mailbox.inbox(), None)
        .with_context(|| format!("watching {}", mailbox.inbox().display()))?;
    let mut seen: HashSet<String> = mailbox.scan()?.iter().map(|m| m.id.clone()).collect();
    eprintln!(
        "t9-ipc: following {}{} (Ctrl-C stops)",
        mailbox.inbox().display(),
        args.to
            .as_deref()
            .map(|n| format!(", messages for {}", style::line(n)))
            .unwrap_or_default()
    );
    let style = Style::stdout();
    let mut stdout = std::io::stdout();
    while events.changed().await.is_some() {
        events.take();
        // Blocking is fine: nothing else runs on this thread; the watcher has its own.
        for msg in mailbox.scan()? {
            if !seen.insert(msg.id.clone()) {
                continue;
            }
            if args.to.as_deref().is_some_and(|n| !msg.front.is_for(n)) {
                continue;
            }
            let mut text = format!(
                "{}\n  {}\n",
                style::headline(&msg, style),
                style.dim(&style::line(&msg.id))
            );
            if let Some(r) = &msg.front.reply_to {
                let r = style::line(r);
                text.push_str(&format!("  {}\n", style.dim(&format!("reply to {r}"))));
            }
            for line in msg.body.lines() {
                text.push_str("    ");
                text.push_str(&style::text(line));
                text.push('\n');
            }
            text.push('\n');
            // A closed pipe (`t9-ipc tail | head`) ends the command.
            if stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return Ok(());
            }
        }
    }
    anyhow::bail!("the file watcher stopped")
}
