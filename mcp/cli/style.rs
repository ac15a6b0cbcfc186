//! How messages and sessions look on a terminal and in JSON: colour only on a terminal
//! (and never with `NO_COLOR`), the same words otherwise.

use std::io::IsTerminal;

use serde_json::{Value, json};
use t9_ipc::mailbox::Message;

// Kept at its old path until the server imports it from `shared`.
pub use crate::shared::ago;

/// ANSI colour for one output stream, or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    on: bool,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is not set.
    pub fn stdout() -> Style {
        Style {
            on: std::io::stdout().is_terminal() && !t9_ipc::config::no_color(),
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }

    pub fn name(self, text: &str) -> String {
        self.paint("36", text)
    }

    /// `[high]` in yellow, `[critical]` in red, nothing for normal.
    pub fn priority(self, priority: &str) -> String {
        match priority {
            "" | "normal" => String::new(),
            "high" => self.paint("33", "[high] "),
            "critical" => self.paint("1;31", "[critical] "),
            other => format!("[{other}] "),
        }
    }
}

/// `2026-04-06 15:30:00  alpha → beta  [high] subject`: one line about a message.
pub fn headline(msg: &Message, style: Style) -> String {
    let f = &msg.front;
    format!(
        "{}  {} → {}  {}{}",
        style.dim(if f.created.is_empty() {
            "(no date)"
        } else {
            &f.created
        }),
        style.name(&f.from),
        style.name(&f.to),
        style.priority(&f.priority),
        style.bold(&f.subject),
    )
}

/// A whole message for a person: the fields one per line, a blank line, the body.
pub fn full(msg: &Message, folder: Option<&str>) -> String {
    let f = &msg.front;
    let mut out = format!("msg_id:   {}\n", msg.id);
    if let Some(folder) = folder {
        out.push_str(&format!("folder:   {folder}\n"));
    }
    for (key, value) in [
        ("from", &f.from),
        ("to", &f.to),
        ("type", &f.kind),
        ("priority", &f.priority),
        ("created", &f.created),
    ] {
        out.push_str(&format!("{:<9} {value}\n", format!("{key}:")));
    }
    if let Some(r) = &f.reply_to {
        out.push_str(&format!("reply_to: {r}\n"));
    }
    for (key, value) in &f.extra {
        out.push_str(&format!("{:<9} {value}\n", format!("{key}:")));
    }
    out.push_str(&format!("subject:  {}\n\n", f.subject));
    out.push_str(&msg.body);
    if !msg.body.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// A message as a JSON object for scripts: the front matter keys as on disk, `id`, `body`.
pub fn json(msg: &Message) -> Value {
    let f = &msg.front;
    let mut v = json!({
        "id": msg.id,
        "from": f.from,
        "to": f.to,
        "type": f.kind,
        "subject": f.subject,
        "priority": f.priority,
        "created": f.created,
        "body": msg.body,
    });
    if let Some(r) = &f.reply_to {
        v["reply_to"] = json!(r);
    }
    for (key, value) in &f.extra {
        v.as_object_mut()
            .expect("built as an object")
            .entry(key.clone())
            .or_insert_with(|| json!(value));
    }
    v
}

/// `1 message`, `2 messages`.
pub fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}
