//! How messages and sessions look on a terminal and in JSON: colour only on a terminal
//! (and never with `NO_COLOR`), the same words otherwise. Text read from the mailbox is
//! printed escaped ([`line`], [`text`], [`json_text`]): a message cannot send the terminal
//! its own escape sequences (title changes, screen clears, clipboard writes).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::IsTerminal;

use serde_json::{Value, json};
use t9_ipc::mailbox::Message;

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
            other => format!("[{}] ", line(other)),
        }
    }
}

/// `2026-04-06 15:30:00  alpha → beta  [high] subject`: one line about a message.
pub fn headline(msg: &Message, style: Style) -> String {
    let f = &msg.front;
    format!(
        "{}  {} → {}  {}{}",
        style.dim(&if f.created.is_empty() {
            Cow::Borrowed("(no date)")
        } else {
            line(&f.created)
        }),
        style.name(&line(&f.from)),
        style.name(&line(&f.to)),
        style.priority(&f.priority),
        style.bold(&line(&f.subject)),
    )
}

/// A whole message for a person: the fields one per line, a blank line, the body.
pub fn full(msg: &Message, folder: Option<&str>) -> String {
    let f = &msg.front;
    let mut out = format!("msg_id:   {}\n", line(&msg.id));
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
        out.push_str(&format!("{:<9} {}\n", format!("{key}:"), line(value)));
    }
    if let Some(r) = &f.reply_to {
        out.push_str(&format!("reply_to: {}\n", line(r)));
    }
    for (key, value) in &f.extra {
        out.push_str(&format!(
            "{:<9} {}\n",
            format!("{}:", line(key)),
            line(value)
        ));
    }
    out.push_str(&format!("subject:  {}\n\n", line(&f.subject)));
    out.push_str(&text(&msg.body));
    if !msg.body.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// A message as a JSON object for scripts: the front matter keys as on disk, `msg_id` (as
/// the tools and channel events name it), `body`. Print it with [`json_text`].
pub fn json(msg: &Message) -> Value {
    let f = &msg.front;
    let mut v = json!({
        "msg_id": msg.id,
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

pub use t9_ipc::text::plural;

/// `s` on one line, safe to print: see [`escape`]; newlines and tabs are escaped too.
pub fn line(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// Prints a table: the header in bold, then the rows, each column as wide as its widest cell
/// (the last one not padded), every cell on one safe line (see [`line`]).
pub fn print_table<const N: usize>(style: Style, header: [&str; N], rows: &[[String; N]]) {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(|cell| line(cell).into_owned()))
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let joined = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ");
            }
        }
        out.trim_end().to_owned()
    };
    println!("{}", style.bold(&joined(header)));
    for row in &rows {
        println!("{}", joined(row.each_ref().map(String::as_str)));
    }
}

/// A body, safe to print: see [`escape`]; newlines and tabs stay as they are.
pub fn text(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// `s` with every character a terminal could act on shown as an escape: C0 controls and
/// DEL as `\x1b`, C1 controls (8-bit `CSI`, `OSC`, …) and the bidirectional overrides that
/// reorder what is shown as `\u{9b}`. Carriage returns are always escaped (they let a line
/// overwrite itself); newlines and tabs only when `multiline` is false.
fn escape(s: &str, multiline: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c, multiline)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !needs_escape(c, multiline) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char, multiline: bool) -> bool {
    match c {
        '\n' | '\t' => !multiline,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        // Bidirectional embeddings, overrides and isolates, and the direction marks.
        '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        _ => false,
    }
}

/// `value` as pretty JSON, safe to print: serde_json escapes C0 controls already; DEL, C1
/// controls and the bidirectional overrides (which it leaves raw) become `\u` escapes too.
/// They can stand only inside strings, where the escape means the same character.
pub fn json_text(value: &Value) -> String {
    // A JSON value always serialises.
    let raw = serde_json::to_string_pretty(value).unwrap_or_default();
    if !raw.chars().any(|c| needs_escape(c, true)) {
        return raw;
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for c in raw.chars() {
        if needs_escape(c, true) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_acts_on_and_keeps_the_rest() {
        for (input, one_line, body) in [
            (
                "plain ünïcode 한국어",
                "plain ünïcode 한국어",
                "plain ünïcode 한국어",
            ),
            ("\x1b]0;x\x07", "\\x1b]0;x\\x07", "\\x1b]0;x\\x07"),
            ("a\nb\tc\rd", "a\\x0ab\\x09c\\x0dd", "a\nb\tc\\x0dd"),
            (
                "\u{9b}2J \u{202e}txt",
                "\\u{9b}2J \\u{202e}txt",
                "\\u{9b}2J \\u{202e}txt",
            ),
            ("del\x7f", "del\\x7f", "del\\x7f"),
        ] {
            assert_eq!(line(input), one_line, "{input:?}");
            assert_eq!(text(input), body, "{input:?}");
        }
        let v = json!({"s": "\x1b[2J \u{9b}x \u{202e} \n ok"});
        let out = json_text(&v);
        assert!(!out.chars().any(|c| needs_escape(c, true)), "{out:?}");
        let back: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, v);
    }
}
