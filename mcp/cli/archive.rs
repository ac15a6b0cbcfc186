//! `archive` and `prune`: move what is done with out of `inbox/`, and delete old archived
//! messages, each only when asked, each with `--dry-run`.

use chrono::{Local, TimeDelta};
use clap::Args;
use t9_ipc::config::Config;
use t9_ipc::mailbox::ArchivePlan;

use super::open_existing;
use super::style::{line, plural};

/// `t9-ipc archive`.
#[derive(Debug, Args)]
#[command(
    after_help = "Moves from inbox/ to archive/ the messages older than --older-than days \
(by the time in their msg_id) that are finished: expired (ttl), replaced by a later message \
of their sender (supersedes), direct messages their recipient has read (state/<name>.log), \
or broadcasts read by every name that had joined before them. Everything else stays (unread \
mail that has neither expired nor been replaced, messages of unknown age, files that are no \
message); nothing is deleted. Archived messages can \
still be shown and answered. A server does the same at start for mail older than \
IPC_ARCHIVE_DAYS (default 7)."
)]
pub struct ArchiveArgs {
    /// Only messages older than this many days.
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    pub older_than: u32,
    /// List what would move; move nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `t9-ipc prune`.
#[derive(Debug, Args)]
#[command(
    after_help = "Deletes from archive/ the messages older than --older-than days. It \
never touches inbox/, nor a file in archive/ that is no message."
)]
pub struct PruneArgs {
    /// Only archived messages older than this many days.
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub older_than: u32,
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn archive(args: ArchiveArgs, config: &Config) -> anyhow::Result<()> {
    let mailbox = open_existing(config)?;
    let plan = ArchivePlan {
        older_than: TimeDelta::days(args.older_than.into()),
        dry_run: args.dry_run,
    };
    let moved = mailbox.archive(&plan, Local::now())?;
    for m in &moved {
        println!("{}  ({})", line(&m.id), line(&m.why));
    }
    let verb = if args.dry_run { "would move" } else { "moved" };
    eprintln!(
        "t9-ipc: {verb} {} older than {} to archive/",
        plural(moved.len(), "message"),
        plural(args.older_than as usize, "day")
    );
    Ok(())
}

pub fn prune(args: PruneArgs, config: &Config) -> anyhow::Result<()> {
    let mailbox = open_existing(config)?;
    let older_than = TimeDelta::days(args.older_than.into());
    let gone = mailbox.prune(older_than, args.dry_run, Local::now())?;
    for id in &gone {
        println!("{}", line(id));
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    eprintln!(
        "t9-ipc: {verb} {} older than {} from archive/",
        plural(gone.len(), "message"),
        plural(args.older_than as usize, "day")
    );
    Ok(())
}
