//! `board`: the shared board from a terminal or a script (a CI job can set `build: red`).

use anyhow::Context as _;
use chrono::Local;
use clap::Args;
use t9_ipc::config::Config;
use t9_ipc::coord::board::{Board, Entry};

/// `t9-ipc board`.
#[derive(Debug, Args)]
#[command(
    after_help = "Without KEY lists every value; with KEY prints that value; with --set writes \
it. Each value is a file <mailbox>/board/<KEY>.md whose front matter says version, by and at."
)]
pub struct BoardArgs {
    /// The key: 1 to 64 ASCII letters, digits, '_', '-' or '.'.
    pub key: Option<String>,
    /// Write this value under KEY (at most 4096 bytes).
    #[arg(long, value_name = "VALUE", requires = "key")]
    pub set: Option<String>,
    /// With --set: refuse unless the current version is this (0: the key is new).
    #[arg(long, value_name = "VERSION", requires = "set")]
    pub expect: Option<u64>,
    /// With --set: the writer's name recorded as `by` (default: cli).
    #[arg(long = "as", value_name = "NAME", default_value = "cli")]
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn json_of(e: &Entry) -> serde_json::Value {
    serde_json::json!({"key": e.key, "value": e.value, "version": e.version, "by": e.by, "at": e.at})
}

pub fn run(args: BoardArgs, config: &Config) -> anyhow::Result<()> {
    let board = Board::new(&config.data_dir);
    let context = || format!("the board {}", board.dir().display());
    let entries: Vec<Entry> = match (&args.key, &args.set) {
        (Some(key), Some(value)) => {
            vec![
                board
                    .set(key, value, args.expect, &args.name, Local::now())
                    .with_context(context)?,
            ]
        }
        (Some(key), None) => match board.get(key).with_context(context)? {
            Some(e) => vec![e],
            None => anyhow::bail!("no value under {key:?}"),
        },
        (None, _) => board.list().with_context(context)?,
    };
    if args.json {
        let rows: Vec<_> = entries.iter().map(json_of).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if args.key.is_some() && args.set.is_none() {
        print!("{}", entries[0].value);
    } else {
        for e in &entries {
            println!("{}", crate::shared::coord::board_line(e));
        }
    }
    Ok(())
}
