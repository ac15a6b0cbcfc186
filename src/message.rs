//! One message file: its front matter, its body, its file name. Pure: takes `&str`, no I/O.
//!
//! The format is `../shared/spec/mailbox.md`: a YAML front matter block, a blank line, then
//! the markdown body. Writing always produces valid YAML; reading also accepts the unquoted
//! `key: value` lines the original Python t9-ipc wrote.

use std::collections::BTreeMap;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone};
use pulldown_cmark::{Event, MetadataBlockKind, Options, Parser, Tag, TagEnd};
use serde::Serialize;

pub use crate::id::{
    MessageId, file_stem, file_stem_part, stem_is_shaped, stem_may_address,
    stem_may_address_everyone, stem_may_be_for, stem_time,
};

/// The longest subject a sender may write, in characters.
pub const MAX_SUBJECT_CHARS: usize = 200;
/// The largest body a sender may write, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The recipient that means "every session".
pub const BROADCAST: &str = "all";
/// The recipient that means "the person behind the sessions": such a message is an
/// escalation, forwarded to Telegram when it is configured.
pub const HUMAN: &str = "human";
/// The sender of what the person writes back from Telegram.
pub const TELEGRAM: &str = "telegram";
/// Names no session may take, in any case: the addresses of everyone, the person, and
/// t9-ipc's own notices. Only t9-ipc's own code writes them as a sender (`human` from the
/// command line outside any Claude Code session, `telegram` from the Telegram poller), and
/// a file that claims one without a valid seal shows as unverified ([`crate::seal`]).
pub const RESERVED: [&str; 5] = [BROADCAST, "broadcast", HUMAN, TELEGRAM, "system"];
/// `created` and `timestamp` values on disk: local time to the second.
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// How urgent a message is. Unknown words on disk are kept as they are by [`FrontMatter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    #[default]
    Normal,
    High,
    Critical,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

/// The front matter of a message file, as read from disk or about to be written.
///
/// Values are kept as strings, the way a person reads them: an unknown `type` or `priority`
/// written by another program survives a read untouched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FrontMatter {
    pub from: String,
    pub to: String,
    /// `ipc`, `broadcast`, `escalation`, or any word another writer chose.
    pub kind: String,
    pub subject: String,
    pub priority: String,
    /// Local time `YYYY-MM-DD HH:MM:SS`, as written; may be empty in foreign files.
    pub created: String,
    /// The id of the message this one answers.
    pub reply_to: Option<String>,
    /// The id of the first message of the thread this one belongs to (set on replies).
    pub thread: Option<String>,
    /// The id of an earlier message of the same sender to the same recipient that this one
    /// replaces: the earlier one is no longer pushed or listed as unread.
    pub supersedes: Option<String>,
    /// Local time `YYYY-MM-DD HH:MM:SS` after which the message is neither pushed nor unread.
    pub expires: Option<String>,
    /// `false` when the sender expects no answer (information only).
    pub expects_reply: Option<String>,
    /// Keys this version does not know, kept so nothing a reader shows is lost.
    pub extra: BTreeMap<String, String>,
}

impl FrontMatter {
    /// True when `to` addresses every session (`all`, or `broadcast` from older writers).
    pub fn is_broadcast(&self) -> bool {
        self.to == BROADCAST || self.to == "broadcast"
    }

    /// True when this message is for `session`: addressed to it or to everyone, and not sent
    /// by it.
    pub fn is_for(&self, session: &str) -> bool {
        self.from != session && (self.to == session || self.is_broadcast())
    }

    /// `created` as a local time, when it parses.
    pub fn created_at(&self) -> Option<DateTime<Local>> {
        parse_time(&self.created)
    }

    /// True when the message has an `expires` time and `now` is past it. An `expires` value
    /// that does not parse never expires the message (it is kept, not lost).
    pub fn is_expired(&self, now: DateTime<Local>) -> bool {
        self.expires
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|t| now > t)
    }

    /// False when the sender said no answer is expected (`expects_reply: false`).
    pub fn expects_reply(&self) -> bool {
        !matches!(
            self.expects_reply.as_deref().map(str::trim),
            Some("false" | "no" | "False" | "No")
        )
    }

    /// `normal` when the priority is missing; otherwise as written.
    pub fn priority_or_normal(&self) -> &str {
        if self.priority.is_empty() {
            "normal"
        } else {
            &self.priority
        }
    }

    /// Sorting rank of the priority: critical first, then high, then everything else.
    pub fn urgency(&self) -> u8 {
        match self.priority.trim() {
            "critical" => 0,
            "high" => 1,
            _ => 2,
        }
    }
}

/// A local time written as `YYYY-MM-DD HH:MM:SS`.
pub fn parse_time(text: &str) -> Option<DateTime<Local>> {
    let naive = NaiveDateTime::parse_from_str(text.trim(), TIME_FORMAT).ok()?;
    Local.from_local_datetime(&naive).earliest()
}

/// Why a file is not a message. Each variant tells a person what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no front matter (the file must start with a `---` line)")]
    NoFrontMatter,
    #[error("the front matter has no closing `---` line, or is empty")]
    Unclosed,
    #[error("the front matter has no `{0}`")]
    Missing(&'static str),
    /// A key of the format given twice with different values: which one was meant?
    #[error("the front matter has `{0}` twice, with different values")]
    Twice(&'static str),
}

/// Splits a message file into front matter and body.
///
/// The front matter is recognised by pulldown-cmark as a YAML metadata block at offset 0
/// (after a UTF-8 byte order mark, which Windows editors write). Strict YAML is tried first;
/// where it fails, or reads a value as empty that a plain `key: value` line holds
/// (`subject: #3 is fixed`), the line is taken as it stands. A key of the format that is
/// given twice with different values makes the file no message.
pub fn parse(text: &str) -> Result<(FrontMatter, String), ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (yaml, body) = split(text)?;
    let map = read_keys(&yaml)?;
    let take = |key: &'static str| map.get(key).cloned().unwrap_or_default();
    let optional = |key: &'static str| map.get(key).filter(|v| !v.is_empty()).cloned();
    let front = FrontMatter {
        from: take("from"),
        to: take("to"),
        kind: take("type"),
        subject: take("subject"),
        priority: take("priority"),
        created: take("created"),
        reply_to: optional("reply_to"),
        thread: optional("thread"),
        supersedes: optional("supersedes"),
        expires: optional("expires"),
        expects_reply: optional("expects_reply"),
        extra: map
            .iter()
            .filter(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    if front.from.is_empty() {
        return Err(ParseError::Missing("from"));
    }
    if front.to.is_empty() {
        return Err(ParseError::Missing("to"));
    }
    Ok((front, body))
}

const KNOWN_KEYS: &[&str] = &[
    "from",
    "to",
    "type",
    "subject",
    "priority",
    "created",
    "reply_to",
    "thread",
    "supersedes",
    "expires",
    "expects_reply",
];

/// Finds the front matter block at offset 0 and returns its raw YAML and the body after it.
fn split(text: &str) -> Result<(String, String), ParseError> {
    let options = Options::ENABLE_YAML_STYLE_METADATA_BLOCKS;
    // pulldown-cmark parses all of what it is given; the block ends at the first closing
    // line, so the body (up to a megabyte of markdown) is not handed to it.
    let head = &text[..front_matter_end(text).unwrap_or(text.len())];
    let mut events = Parser::new_ext(head, options).into_offset_iter();
    let block_end = match events.next() {
        Some((Event::Start(Tag::MetadataBlock(MetadataBlockKind::YamlStyle)), range))
            if range.start == 0 =>
        {
            range.end
        }
        // pulldown-cmark does not open a block it cannot close (nor an empty one).
        _ if text.starts_with("---\n") || text.starts_with("---\r\n") => {
            return Err(ParseError::Unclosed);
        }
        _ => return Err(ParseError::NoFrontMatter),
    };
    let mut yaml = String::new();
    for (event, _) in events {
        match event {
            Event::Text(t) => yaml.push_str(&t),
            Event::End(TagEnd::MetadataBlock(_)) => break,
            _ => {}
        }
    }
    // pulldown-cmark runs an unclosed block to the end of the text; ours must be closed.
    let closing = text[..block_end].trim_end_matches([' ', '\r', '\n']);
    let closed = closing.len() > 3 && (closing.ends_with("\n---") || closing.ends_with("\n..."));
    if !closed {
        return Err(ParseError::Unclosed);
    }
    // The closing line's end, then the blank line (if any) before the body.
    let rest = &text[block_end..];
    let rest = strip_line_end(rest).unwrap_or(rest);
    let rest = strip_line_end(rest).unwrap_or(rest);
    // The last line end is the file's, in the file's style: a body of an LF file that ends
    // in `\r` keeps it.
    let last = if text.starts_with("---\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let body = rest.strip_suffix(last).unwrap_or(rest);
    Ok((yaml, body.to_owned()))
}

/// The end (after its line break) of the first line after the first that closes a YAML
/// metadata block for pulldown-cmark: exactly `---` or `...`, then only spaces.
fn front_matter_end(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut at = b.iter().position(|&c| c == b'\n')? + 1;
    while at < b.len() {
        let end = b[at..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(b.len(), |i| at + i + 1);
        let line = &b[at..end];
        let fence = |c: u8| line.iter().take_while(|&&x| x == c).count() == 3;
        if fence(b'-') || fence(b'.') {
            let after = line[3..].iter().position(|&c| c != b' ');
            if after.is_none_or(|i| matches!(line[3 + i], b'\n' | b'\r')) {
                return Some(end);
            }
        }
        at = end;
    }
    None
}

fn strip_line_end(s: &str) -> Option<&str> {
    s.strip_prefix("\r\n").or_else(|| s.strip_prefix('\n'))
}

/// Reads the front matter keys as strings: strict YAML, then plain lines where YAML has no
/// answer.
fn read_keys(yaml: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let mut map = plain_lines(yaml)?;
    if let Ok(serde_yaml::Value::Mapping(strict)) = serde_yaml::from_str::<serde_yaml::Value>(yaml)
    {
        for (key, value) in strict {
            let Some(key) = scalar(&key) else { continue };
            match scalar(&value) {
                // An empty string too: `priority: ''` is empty, not two quotes.
                Some(v) => {
                    map.insert(key, v);
                }
                // Null or no scalar in YAML (`subject: #3 fixed` is a comment there): keep
                // the line.
                None => {
                    map.entry(key).or_default();
                }
            }
        }
    }
    Ok(map)
}

/// `key: value` lines, as the original Python reader took them. Lines indented with spaces
/// belong to the value above (YAML); tabs cannot indent YAML, so a line indented with tabs
/// is read as a key. A key of the format given twice with different values is refused.
fn plain_lines(yaml: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let mut map = BTreeMap::new();
    let lines = yaml
        .lines()
        .map(|line| line.trim_start_matches('\t'))
        .filter(|line| !line.starts_with([' ', '#']))
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(k, _)| !k.is_empty());
    for (key, value) in lines {
        if let Some(earlier) = map.insert(key.to_owned(), value.to_owned())
            && earlier != value
            && let Some(known) = KNOWN_KEYS.iter().find(|k| **k == key)
        {
            return Err(ParseError::Twice(known));
        }
    }
    Ok(map)
}

fn scalar(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Null => None,
        serde_yaml::Value::Tagged(t) => scalar(&t.value),
        _ => None,
    }
}

/// The front matter as it is written: fixed key order, every value a YAML string.
#[derive(Serialize)]
struct OnDisk<'a> {
    from: &'a str,
    to: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    subject: &'a str,
    priority: &'a str,
    created: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    supersedes: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expects_reply: Option<&'a str>,
    /// Written last: the seal covers every key above ([`crate::seal`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    seal: Option<&'a str>,
}

/// Renders a whole message file. The subject's line breaks become spaces; every value is
/// quoted by the YAML writer where needed, so no value can add a key or end the block.
/// Of the keys this version does not know, only the seal is written.
pub fn render(front: &FrontMatter, body: &str) -> String {
    let subject = one_line(&front.subject);
    let on_disk = OnDisk {
        from: &front.from,
        to: &front.to,
        kind: &front.kind,
        subject: &subject,
        priority: &front.priority,
        created: &front.created,
        reply_to: front.reply_to.as_deref(),
        thread: front.thread.as_deref(),
        supersedes: front.supersedes.as_deref(),
        expires: front.expires.as_deref(),
        expects_reply: front.expects_reply.as_deref(),
        seal: front.extra.get(crate::seal::SEAL_KEY).map(String::as_str),
    };
    // Serialising a struct of strings to YAML cannot fail.
    let yaml = serde_yaml::to_string(&on_disk).expect("a struct of strings is valid YAML");
    let mut out = String::with_capacity(yaml.len() + body.len() + 16);
    out.push_str("---\n");
    out.push_str(&yaml);
    if !yaml.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("---\n\n");
    out.push_str(body);
    out.push('\n');
    out
}

/// Replaces every line break (`\r\n`, `\n`, `\r`) with one space.
pub fn one_line(s: &str) -> String {
    s.replace("\r\n", " ").replace(['\n', '\r'], " ")
}

/// Checks a session name: `[A-Za-z0-9_-]{3,64}`, and not a word that means "everyone".
pub fn check_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if !(3..=64).contains(&len) {
        return Err(format!(
            "{name:?} has {len} characters; a name has 3 to 64 characters"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; a name uses only letters A-Z a-z, digits, '_' and '-'"
        ));
    }
    if name.eq_ignore_ascii_case(BROADCAST) || name.eq_ignore_ascii_case("broadcast") {
        return Err(format!("{name:?} is reserved: it addresses every session"));
    }
    if is_human(name) {
        return Err(format!(
            "{name:?} is reserved: it addresses the person (Telegram), not a session"
        ));
    }
    if is_reserved(name) {
        return Err(format!("{name:?} is reserved for t9-ipc's own notices"));
    }
    Ok(())
}

/// True for the [`RESERVED`] names, in any case.
pub fn is_reserved(name: &str) -> bool {
    RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r))
}

/// True for the recipients that mean the person: `human`, and `telegram` (the sender of
/// the person's replies, so that answering one with `to` = its `from` works).
pub fn is_human(name: &str) -> bool {
    name.eq_ignore_ascii_case(HUMAN) || name.eq_ignore_ascii_case(TELEGRAM)
}

/// Checks a subject for sending and returns it on one line.
pub fn check_subject(subject: &str) -> Result<String, String> {
    let subject = one_line(subject);
    let trimmed = subject.trim();
    if trimmed.is_empty() {
        return Err("the subject is empty; give a one-line summary".to_owned());
    }
    let chars = trimmed.chars().count();
    if chars > MAX_SUBJECT_CHARS {
        return Err(format!(
            "the subject has {chars} characters; at most {MAX_SUBJECT_CHARS} are allowed. \
             Shorten it and put the details in the body"
        ));
    }
    Ok(trimmed.to_owned())
}

/// Checks a body for sending.
pub fn check_body(body: &str) -> Result<(), String> {
    if body.len() > MAX_BODY_BYTES {
        return Err(format!(
            "the body is {} bytes; at most {MAX_BODY_BYTES} bytes (64 KiB) are allowed. \
             Nothing was sent. Write the text to a file and send its path in the body instead",
            body.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn front(subject: &str) -> FrontMatter {
        FrontMatter {
            from: "alpha".into(),
            to: "beta".into(),
            kind: "ipc".into(),
            subject: subject.into(),
            priority: "normal".into(),
            created: "2026-04-06 15:30:00".into(),
            ..FrontMatter::default()
        }
    }

    #[test]
    fn hostile_subjects_round_trip() {
        for subject in [
            "fix: \"x\" #1",
            "---",
            "- leading dash",
            "'single' and \"double\"",
            "key: value: more",
            "#hash first",
            "[flow] {map}",
            "yes",
            "null",
            "12",
            "…unicode ✓",
            "trailing space ",
        ] {
            let text = render(&front(subject), "the body");
            let (back, body) = parse(&text).unwrap_or_else(|e| panic!("{subject:?}: {e}\n{text}"));
            assert_eq!(back.subject, subject, "{text}");
            assert_eq!(body, "the body");
            assert!(
                back.extra.is_empty(),
                "{subject:?} added keys: {:?}",
                back.extra
            );
        }
    }

    #[test]
    fn the_block_ends_at_the_first_closing_line() {
        for (text, body) in [
            (
                "---\nfrom: a\nto: b\n---\n\nbody\n---\nmore\n",
                "body\n---\nmore",
            ),
            ("---\nfrom: a\nto: b\n----\n---  \n\nbody\n", "body"),
            ("---\nfrom: a\nto: b\n...\n\nbody\n", "body"),
            ("---\r\nfrom: a\r\nto: b\r\n---\r\n\r\nbody\r\n", "body"),
            ("---\nfrom: a\nto: b\n---", ""),
        ] {
            let (front, got) = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!((front.to.as_str(), got.as_str()), ("b", body), "{text:?}");
        }
        assert_eq!(
            parse("---\nfrom: a\nto: b\n---- \n-- -\n"),
            Err(ParseError::Unclosed)
        );
    }

    #[test]
    fn empty_values_read_back_empty() {
        let mut f = front("s");
        f.priority = String::new();
        f.kind = String::new();
        f.created = String::new();
        let (back, _) = parse(&render(&f, "b")).unwrap();
        assert_eq!(back, f);
        let (back, _) = parse("---\nfrom: a\nto: b\nsubject: \"\"\npriority:\n---\n").unwrap();
        assert_eq!((back.subject.as_str(), back.priority.as_str()), ("", ""));
    }

    #[test]
    fn newline_in_subject_becomes_space_and_adds_no_key() {
        let text = render(&front("one\nto: evil\r\nthree"), "b");
        let (back, _) = parse(&text).unwrap();
        assert_eq!(back.subject, "one to: evil three");
        assert_eq!(back.to, "beta");
        assert!(back.extra.is_empty());
    }

    #[test]
    fn body_with_front_matter_lookalikes_survives() {
        let body = "---\nfrom: mallory\n---\n\ntext\n\n";
        let text = render(&front("s"), body);
        let (back, got) = parse(&text).unwrap();
        assert_eq!(back.from, "alpha");
        assert_eq!(got, body);
    }

    #[test]
    fn bodies_keep_their_first_and_last_characters() {
        for body in [
            "",
            "\r",
            "\n",
            "\r\n",
            "\nafter a blank line",
            "\r\nafter",
            "ends in cr\r",
            "ends in lf\n",
            "\n\n",
            " ",
            "\u{feff}mark",
            "---",
        ] {
            let text = render(&front("s"), body);
            let (_, got) = parse(&text).unwrap_or_else(|e| panic!("{body:?}: {e}\n{text}"));
            assert_eq!(got, body, "{text:?}");
        }
    }

    #[test]
    fn reply_to_round_trips() {
        let mut f = front("re: s");
        f.reply_to = Some("20260406T153000000000-0a1b2c3d-beta-alpha-s".into());
        let (back, _) = parse(&render(&f, "")).unwrap();
        assert_eq!(back.reply_to, f.reply_to);
    }

    #[test]
    fn stem_replaces_and_cuts() {
        let now = Local.with_ymd_and_hms(2026, 4, 6, 15, 30, 0).unwrap();
        let stem = file_stem(
            now,
            "0a1b2c3d",
            "a-very-long-session-name",
            "all",
            "fix: the parser / lexer, and then more words than forty",
        );
        assert_eq!(
            stem,
            "20260406T153000000000-0a1b2c3d-a-very-long-sess-all-fix__the_parser___lexer__and_then_more_w"
        );
    }

    #[test]
    fn delivery_keys_round_trip() {
        let mut f = front("s");
        f.reply_to = Some("20260406T153000000001-0a1b2c3d-a-b-s".into());
        f.thread = Some("20260406T150000000001-0a1b2c3d-b-a-q".into());
        f.supersedes = Some("20260406T152000000001-0a1b2c3d-a-b-s".into());
        f.expires = Some("2026-04-06 16:30:00".into());
        f.expects_reply = Some("false".into());
        let (back, _) = parse(&render(&f, "b")).unwrap();
        assert_eq!(back, f);
        assert!(!back.expects_reply());
        let at = |h, m| Local.with_ymd_and_hms(2026, 4, 6, h, m, 0).unwrap();
        assert!(!back.is_expired(at(16, 30)));
        assert!(back.is_expired(at(16, 31)));
        assert!(front("s").expects_reply());
        assert!(!front("s").is_expired(at(23, 0)));
    }

    #[test]
    fn stem_prefilter_never_rejects_a_message_for_the_name() {
        let now = Local.with_ymd_and_hms(2026, 4, 6, 15, 30, 0).unwrap();
        let stem = |from, to, subject| file_stem(now, "0a1b2c3d", from, to, subject);
        let long = "a-very-long-session-name-indeed";
        for (from, to) in [
            ("alpha", "beta"),
            ("x-y-z", "a-b"),
            ("beta", long),
            ("ab-c", "all"),
            ("0_0", "---"),
            ("x--", "--y"),
        ] {
            for subject in ["s", "-beta-", "a-b", ""] {
                let stem = stem(from, to, subject);
                assert!(stem_may_address(&stem, to), "{stem} for {to}");
            }
        }
        assert!(!stem_may_address(&stem("alpha", "beta", "news"), "gamma"));
        assert!(!stem_may_address(&stem("alpha", "beta", "news"), "all"));
        assert!(stem_may_address("notes", "gamma"));
    }

    #[test]
    fn stem_time_reads_microseconds() {
        let now = Local.with_ymd_and_hms(2026, 4, 6, 15, 30, 0).unwrap()
            + chrono::TimeDelta::microseconds(123_456);
        let stem = file_stem(now, "0a1b2c3d", "a", "b", "s");
        assert_eq!(stem_time(&stem), Some(now));
        assert_eq!(stem_time("notes"), None);
    }

    #[test]
    fn names() {
        assert!(check_name("alpha").is_ok());
        assert!(check_name("a_b-9").is_ok());
        assert!(check_name("ab").is_err());
        assert!(check_name("has space").is_err());
        assert!(check_name("all").is_err());
        assert!(check_name("Broadcast").is_err());
        assert!(check_name("human").is_err());
        assert!(check_name("Telegram").is_err());
        assert!(check_name("SYSTEM").is_err());
        assert!(RESERVED.iter().all(|r| check_name(r).is_err()));
        assert!(check_name("humans").is_ok());
        assert!(check_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn limits_refuse_instead_of_cutting() {
        assert!(check_subject(&"s".repeat(200)).is_ok());
        assert!(check_subject(&"s".repeat(201)).is_err());
        assert!(check_subject("  \n ").is_err());
        assert!(check_body(&"b".repeat(MAX_BODY_BYTES)).is_ok());
        let err = check_body(&"b".repeat(MAX_BODY_BYTES + 1)).unwrap_err();
        assert!(err.contains("file"), "{err}");
    }

    #[test]
    fn is_for() {
        let f = front("s");
        assert!(f.is_for("beta"));
        assert!(!f.is_for("alpha"));
        assert!(!f.is_for("gamma"));
        let mut b = front("s");
        b.to = "broadcast".into();
        assert!(b.is_for("gamma"));
        assert!(!b.is_for("alpha"));
    }
}
