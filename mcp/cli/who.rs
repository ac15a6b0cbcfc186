//! `who`: the live sessions, as a table for people or JSON for scripts.

use std::collections::BTreeMap;

use chrono::{DateTime, Local};
use clap::Args;
use serde_json::{Value, json};
use t9_ipc::config::Config;
use t9_ipc::coord::claims::{Claim, Claims};
use t9_ipc::heartbeat::Heartbeats;

use super::style::{self, Style};
use crate::shared::ago;

/// `t9-ipc who`.
#[derive(Debug, Args)]
#[command(
    after_help = "With --json: an array of objects, one a session, each with `name` and \
the fields of its heartbeats.json entry (pid, cwd, timestamp, working_on, push, …), and \
`claims` (its live file claims, one line each)."
)]
pub struct WhoArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Each session's live file claims, one line each; a warning and none when they cannot be
/// read.
fn claims(config: &Config, now: DateTime<Local>) -> BTreeMap<String, Vec<String>> {
    match Claims::new(&config.data_dir).by_session(now) {
        Ok(by) => by
            .into_iter()
            .map(|(name, cs)| (name, cs.iter().map(Claim::describe).collect()))
            .collect(),
        Err(err) => {
            eprintln!("t9-ipc who: file claims not shown: {err}");
            BTreeMap::new()
        }
    }
}

pub fn run(args: WhoArgs, config: &Config) -> anyhow::Result<()> {
    let now = Local::now();
    // Heartbeats of a mailbox that does not exist would read as "nobody": say so instead.
    super::mailbox_exists(config)?;
    let live = Heartbeats::new(&config.data_dir).live(now);
    let others = super::federation::others(&config.federation);
    let claims = claims(config, now);
    let claims_of = |name: &str| -> Vec<String> { claims.get(name).cloned().unwrap_or_default() };
    if args.json {
        let mut list: Vec<Value> = live
            .iter()
            .map(|(name, entry)| {
                let mut v = serde_json::to_value(entry).unwrap_or_else(|_| json!({}));
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("name".to_owned(), json!(name));
                    obj.insert("claims".to_owned(), json!(claims_of(name)));
                }
                v
            })
            .collect();
        list.extend(super::federation::json(&others));
        println!("{}", style::json_text(&Value::Array(list)));
        return Ok(());
    }
    let style = Style::stdout();
    if live.is_empty() {
        println!("No live session (mailbox {}).", config.data_dir.display());
        super::federation::print(&others, &style);
        return Ok(());
    }
    let rows: Vec<[String; 6]> = live
        .iter()
        .map(|(name, e)| {
            [
                style::line(name).into_owned(),
                e.pid.to_string(),
                style::line(e.push()).into_owned(),
                ago(e.last_seen(), now),
                e.cwd
                    .as_deref()
                    .map_or_else(|| "?".to_owned(), |c| style::line(c).into_owned()),
                style::line(&e.working_on).into_owned(),
            ]
        })
        .collect();
    style::print_table(
        style,
        ["NAME", "PID", "PUSH", "SEEN", "FOLDER", "WORKING ON"],
        &rows,
    );
    super::federation::print(&others, &style);
    let held: Vec<String> = live.keys().flat_map(|name| claims_of(name)).collect();
    if !held.is_empty() {
        println!("\n{}", style.bold("FILE CLAIMS"));
        for c in &held {
            println!("{}", style::line(c));
        }
    }
    Ok(())
}
