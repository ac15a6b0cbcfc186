//! The command line's view of the other machines (`who`), when federation is on.

use chrono::Local;
use serde_json::{Value, json};

use super::style::Style;
use crate::shared::ago;
pub use crate::shared::federation::{Others, others_blocking as others};
use crate::shared::federation::{none_elsewhere, unreachable};

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
            println!(); // stdout-ok
            println!("{}", unreachable(err)); // stdout-ok
            return;
        }
    };
    println!(); // stdout-ok
    if list.is_empty() {
        println!("{}", none_elsewhere(&others.hub)); // stdout-ok
        return;
    }
    let now = Local::now();
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
    let header = ["MACHINE", "NAME", "PID", "SEEN", "FOLDER", "WORKING ON"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == cells.len() - 1 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    println!("{}", style.bold(&line(header))); // stdout-ok
    for row in &rows {
        println!("{}", line(row.each_ref().map(String::as_str))); // stdout-ok
    }
}
