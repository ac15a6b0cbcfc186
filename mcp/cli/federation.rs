//! The command line's view of the other machines (`who`), when federation is on.

use chrono::Local;
use serde_json::{Value, json};

use super::style::{self, Style};
use crate::shared::ago;
pub use crate::shared::federation::{Others, others_blocking as others};
use crate::shared::federation::{none_elsewhere, quiet_lines, unreachable};

/// `who --json`: one object a remote session, with `machine`.
pub fn json(others: &Option<Others>) -> Vec<Value> {
    match others {
        Some(Others {
            found: Ok(list), ..
        }) => list
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or_else(|_| json!({})))
            .collect(),
        _ => Vec::new(),
    }
}

/// `who`: the other machines' sessions as a table, or why they are unknown.
pub fn print(others: &Option<Others>, style: &Style) {
    let Some(others) = others else { return };
    let list = match &others.found {
        Ok(list) => list,
        Err(err) => {
            println!();
            println!("{}", unreachable(err));
            return;
        }
    };
    println!();
    let now = Local::now();
    let quiet = quiet_lines(others, now);
    if list.is_empty() {
        println!("{}", none_elsewhere(&others.hub));
    } else {
        print_rows(list, now, style);
    }
    if !quiet.is_empty() {
        println!("{quiet}");
    }
}

fn print_rows(
    list: &[t9_ipc::federation::presence::Remote],
    now: chrono::DateTime<Local>,
    style: &Style,
) {
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|r| {
            [
                r.machine.clone(),
                r.name.clone(),
                r.pid.to_string(),
                ago(r.last_seen(), now),
                r.cwd.clone().unwrap_or_else(|| "?".to_owned()),
                r.working_on.clone(),
            ]
        })
        .collect();
    style::print_table(
        *style,
        ["MACHINE", "NAME", "PID", "SEEN", "FOLDER", "WORKING ON"],
        &rows,
    );
}
