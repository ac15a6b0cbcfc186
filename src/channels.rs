//! Whether channel events reach the model: what the server can learn about the client that
//! started it. Claude Code sends no acknowledgement and declares no channel capability, so
//! this is inference from evidence, written down so that a person can check it.

use std::fs;

use crate::config::Config;
use crate::process;

/// Whether channel events reach the model of this session, as far as the server can tell.
/// It decides whether a pushed message counts as seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Events reach the model: a pushed message is not repeated by `unread` or reminders.
    On,
    /// Events do not reach the model: pushed or not, mail stays unread until read.
    Off,
    /// Not known: mail counts as unread until the model shows it saw a pushed message.
    Unknown,
}

impl Push {
    pub fn as_str(self) -> &'static str {
        match self {
            Push::On => "on",
            Push::Off => "off",
            Push::Unknown => "unknown",
        }
    }

    /// The state a word written by [`Push::as_str`] names; any other word is `Unknown`.
    pub fn from_word(word: &str) -> Push {
        match word {
            "on" => Push::On,
            "off" => Push::Off,
            _ => Push::Unknown,
        }
    }
}

/// The flags that make Claude Code register channel servers.
const CHANNEL_FLAGS: &[&str] = &["--dangerously-load-development-channels", "--channels"];

/// Decides, at `initialize`, whether events will reach the model, and says why.
///
/// In order: `IPC_PUSH`; a client other than Claude Code (it shows no channel events); an
/// account that has no channels (Bedrock, Vertex, Foundry); the command line of the Claude
/// Code process that started this server (its parent, or an ancestor when a wrapper such as
/// `npx` sits between): with a channels flag naming a `server:` it is on, without it off.
/// Anything else is unknown, until the model answers a message it can only have seen as an
/// event.
pub fn detect(config: &Config, client_name: &str) -> (Push, String) {
    if let Some(on) = config.push {
        let push = if on { Push::On } else { Push::Off };
        return (push, format!("IPC_PUSH={}", push.as_str()));
    }
    if client_name != "claude-code" {
        return (
            Push::Off,
            format!("the client is {client_name:?}, not Claude Code"),
        );
    }
    if let Some(var) = config.account_without_channels {
        return (
            Push::Off,
            format!("{var} is set: that account has no channels"),
        );
    }
    for pid in process::ancestors_from(std::os::unix::process::parent_id(), 4) {
        let Some(args) = cmdline(pid) else { continue };
        if !is_claude(&args) {
            continue;
        }
        return if has_channel_flag(&args) {
            (
                Push::On,
                format!("Claude Code (pid {pid}) was started with the channels flag"),
            )
        } else {
            (
                Push::Off,
                format!("Claude Code (pid {pid}) was started without the channels flag"),
            )
        };
    }
    (
        Push::Unknown,
        "the Claude Code process was not found among this server's parents".to_owned(),
    )
}

/// True for the command line of Claude Code: the native `claude` binary or its npm package.
fn is_claude(args: &[String]) -> bool {
    let Some(first) = args.first() else {
        return false;
    };
    let base = first.rsplit('/').next().unwrap_or(first);
    base == "claude"
        || args
            .iter()
            .take(3)
            .any(|a| a.contains("@anthropic-ai/claude-code") || a.ends_with("/claude"))
}

/// True when a channels flag is followed by a `server:` entry (custom channel servers are
/// named that way; `plugin:` entries are other channels).
fn has_channel_flag(args: &[String]) -> bool {
    args.iter().enumerate().any(|(i, a)| {
        CHANNEL_FLAGS.iter().any(|flag| {
            let value = match a.strip_prefix(flag) {
                Some("") => args.get(i + 1).map(String::as_str),
                Some(v) => v.strip_prefix('='),
                None => None,
            };
            value.is_some_and(|v| v.split([',', ' ']).any(|e| e.starts_with("server:")))
        })
    })
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn recognises_claude_and_its_flag() {
        assert!(is_claude(&args("claude --resume")));
        assert!(is_claude(&args("/home/u/.local/bin/claude")));
        assert!(is_claude(&args(
            "node /usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"
        )));
        assert!(!is_claude(&args("bash -c t9-ipc serve")));
        assert!(has_channel_flag(&args(
            "claude --dangerously-load-development-channels server:t9-ipc"
        )));
        assert!(has_channel_flag(&args("claude --channels=server:ipc")));
        assert!(!has_channel_flag(&args(
            "claude --channels plugin:telegram"
        )));
        assert!(!has_channel_flag(&args("claude --resume")));
    }
}
