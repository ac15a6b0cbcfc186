//! Argument types and formatting that both the command line (`cli`) and the MCP server
//! (`server`) use, so that the two say the same things the same way.

pub mod coord;
pub mod federation;

use chrono::{DateTime, Local};
use clap::ValueEnum;
use t9_ipc::message::Priority;

/// Message priority, as a command-line flag and as a tool argument.
#[derive(Debug, Clone, Copy, Default, ValueEnum, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PriorityArg {
    #[default]
    Normal,
    High,
    Critical,
}

impl From<PriorityArg> for Priority {
    fn from(p: PriorityArg) -> Priority {
        match p {
            PriorityArg::Normal => Priority::Normal,
            PriorityArg::High => Priority::High,
            PriorityArg::Critical => Priority::Critical,
        }
    }
}

/// `12s ago`, `5m ago`, `2h03m ago`; `unknown` without a time.
pub fn ago(then: Option<DateTime<Local>>, now: DateTime<Local>) -> String {
    let Some(then) = then else {
        return "unknown".to_owned();
    };
    let s = now.signed_duration_since(then).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        _ => format!("{}h{:02}m ago", s / 3600, (s % 3600) / 60),
    }
}
