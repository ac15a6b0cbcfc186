//! Telegram: escalations out to the person, and what the person writes back into the inbox.
//! The only user of reqwest, and the only code that holds the bot token.
//!
//! - **Out.** [`Telegram::offer`] queues a message that [`is_escalation`]; the forwarder
//!   ([`Telegram::forward`]) claims it (so that exactly one of the running servers sends it),
//!   renders it ([`render`]) and sends it with retries, then records the outcome beside it.
//!   [`Telegram::catch_up`] offers the escalations of the last 24 hours at start, so a
//!   restarted server finishes what was pending.
//! - **Back.** [`Telegram::answer`] waits to be elected (a lock on `poll.lock`; the server
//!   holding it long-polls `getUpdates`, and the next waiting server takes over when it
//!   exits). A reply to a forwarded message becomes an inbox message from `telegram` to the
//!   session that escalated, with `reply_to` set; `@name text` goes to that session. Only
//!   the configured chat is heard.
//!
//! On disk, under `<data>/telegram/`:
//!
//! ```text
//! claims/<msg_id>       created exclusively (a hard link) by the server that forwards the
//!                       message, and locked while it works; lines: who claimed it, each part
//!                       sent (`part 1/2 <telegram id>`), then `done sent` or `done failed`
//! failed/<msg_id>.txt   why a forward was given up: when, how many tries, the last error
//! replies.log           one JSON line a sent part: its Telegram id -> the escalated msg_id
//! offset                the next getUpdates offset
//! poll.lock             the lock that elects the one server reading replies
//! ```
//!
//! The token is a [`Token`]: it prints as `<redacted>`, and every error text that could hold
//! it (reqwest's include the URL, and the URL holds the token) is scrubbed before it is
//! logged or written.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local, TimeDelta};
use pulldown_cmark::{CodeBlockKind, Event, LinkType, Options, Parser, Tag as Md, TagEnd};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::TelegramConfig;
use crate::error::{Error, Result};
use crate::mailbox::{self, Draft, Mailbox, Message};
use crate::message::{self, BROADCAST, FrontMatter, TELEGRAM};

/// Telegram's limit on one message's text, in UTF-16 code units (what Telegram counts).
pub const MAX_MESSAGE: usize = 4096;
/// Room kept in every part for its `(2/3) ` mark.
const MARK_ROOM: usize = 16;
/// The longest HTML of one part before its mark.
const PART_BUDGET: usize = MAX_MESSAGE - MARK_ROOM;
/// Inline tags nested deeper than this are left out (their text stays), so that the tags
/// closed and reopened around a split always fit in a part.
const MAX_INLINE_DEPTH: usize = 8;
/// Longer link targets are written out as text (which can be split) instead of an `<a>`.
const MAX_HREF: usize = 1000;
/// How far back [`Telegram::catch_up`] looks, by the stamp in the file name.
pub const CATCH_UP_WINDOW: Duration = Duration::from_secs(24 * 3600);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole of one request (`sendMessage`), answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Telegram holds a `getUpdates` call open when there is nothing new.
const POLL_SECONDS: u64 = 50;
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// When a 429 answer names no `retry_after`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

const REDACTED: &str = "<redacted>";

/// The bot token. Its `Debug` and `Display` print `<redacted>`; only the request URL
/// (built inside this module) ever holds the real value.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    pub fn new(token: impl Into<String>) -> Token {
        Token(token.into().into())
    }

    /// `text` with every occurrence of the token (also percent-encoded) replaced.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        text.replace(&*self.0, REDACTED)
            .replace(&self.0.replace(':', "%3A"), REDACTED)
            .replace(&self.0.replace(':', "%3a"), REDACTED)
    }

    fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({REDACTED})")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// True when a message goes to the person: `type: escalation` or `priority: critical`
/// (any case). What the person wrote (`from: telegram` or `human`) never goes back.
pub fn is_escalation(front: &FrontMatter) -> bool {
    if message::is_human(front.from.trim()) {
        return false;
    }
    front.kind.trim().eq_ignore_ascii_case("escalation")
        || front.priority.trim().eq_ignore_ascii_case("critical")
}

// ---------------------------------------------------------------------------------------
// Rendering: markdown to Telegram's HTML subset, split into parts.

/// One Telegram message of a rendered escalation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Telegram's HTML subset (`parse_mode: HTML`): `<b> <i> <code> <pre> <a href>` only;
    /// every other `<`, `>` and `&` is escaped. At most [`MAX_MESSAGE`] UTF-16 units.
    pub html: String,
    /// The same text without markup (link targets in brackets): sent instead when
    /// Telegram refuses the HTML. Never longer than `html`.
    pub plain: String,
}

/// Renders a message for Telegram: the subject in bold, the sender (and recipient and
/// priority), the markdown body, and a line saying how to answer. Long texts are split
/// into parts under [`MAX_MESSAGE`] at paragraph, line or word boundaries (in that order of
/// preference), each part marked `(i/n)`, with open tags closed and reopened around a
/// split. Nothing is left out.
pub fn render(msg: &Message) -> Vec<Part> {
    let f = &msg.front;
    let mut a = Atoms::default();
    a.atoms.push(Atom::Open(Tag::Bold));
    a.prose(message::one_line(&f.subject).trim());
    a.atoms.push(Atom::Close);
    a.brk(Level::Line);
    let mut who = format!("from {}", f.from);
    if !message::is_human(f.to.trim()) {
        who.push_str(&format!(" to {}", f.to));
    }
    let priority = f.priority.trim();
    if !priority.is_empty() && !priority.eq_ignore_ascii_case("normal") {
        who.push_str(&format!(" · {priority}"));
    }
    a.atoms.push(Atom::Open(Tag::Italic));
    a.prose(&who);
    a.atoms.push(Atom::Close);
    a.brk(Level::Para);
    markdown(&mut a, &msg.body);
    a.brk(Level::Para);
    a.atoms.push(Atom::Open(Tag::Italic));
    a.prose(&format!("Reply to this message to answer {}.", f.from));
    a.atoms.push(Atom::Close);
    split(&a.atoms)
}

/// The tags Telegram's HTML subset has that this renderer writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tag {
    Bold,
    Italic,
    Code,
    /// A code block, with its language when the fence names one.
    Pre(Option<String>),
    Link(String),
}

impl Tag {
    fn open(&self) -> String {
        match self {
            Tag::Bold => "<b>".to_owned(),
            Tag::Italic => "<i>".to_owned(),
            Tag::Code => "<code>".to_owned(),
            Tag::Pre(None) => "<pre>".to_owned(),
            Tag::Pre(Some(lang)) => format!("<pre><code class=\"language-{lang}\">"),
            Tag::Link(href) => {
                let mut s = String::from("<a href=\"");
                for c in href.chars() {
                    match c {
                        '"' => s.push_str("&quot;"),
                        c => escape_into(&mut s, c),
                    }
                }
                s.push_str("\">");
                s
            }
        }
    }

    fn close(&self) -> &'static str {
        match self {
            Tag::Bold => "</b>",
            Tag::Italic => "</i>",
            Tag::Code => "</code>",
            Tag::Pre(None) => "</pre>",
            Tag::Pre(Some(_)) => "</code></pre>",
            Tag::Link(_) => "</a>",
        }
    }
}

/// A place where a part may end, from the worst to the best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Word = 0,
    Line = 1,
    Para = 2,
}

impl Level {
    fn text(self) -> &'static str {
        match self {
            Level::Word => " ",
            Level::Line => "\n",
            Level::Para => "\n\n",
        }
    }
}

/// The rendered text as a sequence the splitter can cut anywhere: a break is dropped where
/// a part ends, a tag open at a cut is closed before it and reopened after it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Atom {
    Char(char),
    Open(Tag),
    /// Closes the innermost open tag.
    Close,
    Break(Level),
}

#[derive(Default)]
struct Atoms {
    atoms: Vec<Atom>,
}

impl Atoms {
    /// Running text: spaces and line ends are places to split.
    fn prose(&mut self, s: &str) {
        for c in s.chars() {
            match c {
                ' ' | '\t' => self.brk(Level::Word),
                '\n' => self.brk(Level::Line),
                '\r' => {}
                c => self.atoms.push(Atom::Char(c)),
            }
        }
    }

    /// Text kept exactly as it is (inline code, list markers).
    fn literal(&mut self, s: &str) {
        self.atoms
            .extend(s.chars().filter(|&c| c != '\r').map(Atom::Char));
    }

    /// Code block text: every line end is kept (blank lines too) and is a place to split.
    fn code(&mut self, s: &str) {
        for c in s.chars() {
            match c {
                '\n' => self.atoms.push(Atom::Break(Level::Line)),
                '\r' => {}
                c => self.atoms.push(Atom::Char(c)),
            }
        }
    }

    /// A break between words, lines or paragraphs; next to another break the stronger one
    /// stays; none at the start.
    fn brk(&mut self, level: Level) {
        match self.atoms.last_mut() {
            None => {}
            Some(Atom::Break(l)) => *l = (*l).max(level),
            Some(_) => self.atoms.push(Atom::Break(level)),
        }
    }
}

/// What the end of an inline markdown element writes.
enum Ending {
    Close,
    Nothing,
    Suffix(String),
}

/// Appends the markdown `text` rendered to atoms.
fn markdown(a: &mut Atoms, text: &str) {
    let mut lists: Vec<Option<u64>> = Vec::new();
    let mut quote = 0usize;
    let mut in_code_block = false;
    // What the end of each open inline element writes; its `Close`s are the open tags.
    let mut inline: Vec<Ending> = Vec::new();
    let depth = |inline: &[Ending]| inline.iter().filter(|e| matches!(e, Ending::Close)).count();
    let quote_mark = |a: &mut Atoms, quote: usize| {
        if quote > 0 {
            a.literal(&"> ".repeat(quote));
        }
    };
    let open_inline = |a: &mut Atoms, inline: &mut Vec<Ending>, tag: Tag| {
        if depth(inline) < MAX_INLINE_DEPTH {
            a.atoms.push(Atom::Open(tag));
            inline.push(Ending::Close);
        } else {
            inline.push(Ending::Nothing);
        }
    };
    let close_inline = |a: &mut Atoms, inline: &mut Vec<Ending>| match inline.pop() {
        Some(Ending::Close) => a.atoms.push(Atom::Close),
        Some(Ending::Suffix(s)) => a.prose(&s),
        Some(Ending::Nothing) | None => {}
    };
    for event in Parser::new_ext(text, Options::empty()) {
        match event {
            Event::Start(tag) => match tag {
                Md::Paragraph => quote_mark(a, quote),
                Md::Heading { .. } => {
                    a.brk(Level::Para);
                    quote_mark(a, quote);
                    open_inline(a, &mut inline, Tag::Bold);
                }
                Md::BlockQuote(_) => {
                    a.brk(Level::Para);
                    quote += 1;
                }
                Md::CodeBlock(kind) => {
                    a.brk(Level::Para);
                    let lang = match kind {
                        CodeBlockKind::Fenced(info) => language(&info),
                        CodeBlockKind::Indented => None,
                    };
                    a.atoms.push(Atom::Open(Tag::Pre(lang)));
                    in_code_block = true;
                }
                Md::HtmlBlock => a.brk(Level::Para),
                Md::List(start) => {
                    a.brk(if lists.is_empty() {
                        Level::Para
                    } else {
                        Level::Line
                    });
                    lists.push(start);
                }
                Md::Item => {
                    a.brk(Level::Line);
                    quote_mark(a, quote);
                    a.literal(&"  ".repeat(lists.len().saturating_sub(1)));
                    let marker = match lists.last_mut() {
                        Some(Some(n)) => {
                            let m = format!("{n}. ");
                            *n += 1;
                            m
                        }
                        _ => "• ".to_owned(),
                    };
                    a.literal(&marker);
                }
                Md::Emphasis => open_inline(a, &mut inline, Tag::Italic),
                Md::Strong => open_inline(a, &mut inline, Tag::Bold),
                Md::Link {
                    link_type,
                    dest_url,
                    ..
                }
                | Md::Image {
                    link_type,
                    dest_url,
                    ..
                } => {
                    let href = if link_type == LinkType::Email && !dest_url.contains(':') {
                        format!("mailto:{dest_url}")
                    } else {
                        dest_url.to_string()
                    };
                    if safe_href(&href) && depth(&inline) < MAX_INLINE_DEPTH {
                        open_inline(a, &mut inline, Tag::Link(href));
                    } else if matches!(link_type, LinkType::Autolink | LinkType::Email)
                        || dest_url.is_empty()
                    {
                        // The text is the address already.
                        inline.push(Ending::Nothing);
                    } else {
                        inline.push(Ending::Suffix(format!(" ({dest_url})")));
                    }
                }
                _ => {}
            },
            Event::End(end) => match end {
                TagEnd::Paragraph => a.brk(Level::Para),
                TagEnd::Heading(_) => {
                    close_inline(a, &mut inline);
                    a.brk(Level::Para);
                }
                TagEnd::BlockQuote(_) => {
                    quote = quote.saturating_sub(1);
                    a.brk(Level::Para);
                }
                TagEnd::CodeBlock => {
                    if let Some(Atom::Break(_)) = a.atoms.last() {
                        a.atoms.pop();
                    }
                    a.atoms.push(Atom::Close);
                    in_code_block = false;
                    a.brk(Level::Para);
                }
                TagEnd::HtmlBlock => a.brk(Level::Para),
                TagEnd::List(_) => {
                    lists.pop();
                    a.brk(if lists.is_empty() {
                        Level::Para
                    } else {
                        Level::Line
                    });
                }
                TagEnd::Item => a.brk(Level::Line),
                TagEnd::Emphasis | TagEnd::Strong | TagEnd::Link | TagEnd::Image => {
                    close_inline(a, &mut inline);
                }
                _ => {}
            },
            Event::Text(t) if in_code_block => a.code(&t),
            Event::Text(t) | Event::Html(t) | Event::InlineHtml(t) => a.prose(&t),
            Event::Code(t) => {
                if depth(&inline) < MAX_INLINE_DEPTH {
                    a.atoms.push(Atom::Open(Tag::Code));
                    a.literal(&t);
                    a.atoms.push(Atom::Close);
                } else {
                    a.literal(&t);
                }
            }
            Event::InlineMath(t) | Event::DisplayMath(t) => a.literal(&t),
            Event::SoftBreak | Event::HardBreak => {
                a.brk(Level::Line);
                quote_mark(a, quote);
            }
            Event::Rule => {
                a.brk(Level::Para);
                a.literal("———");
                a.brk(Level::Para);
            }
            Event::FootnoteReference(label) => a.literal(&format!("[^{label}]")),
            Event::TaskListMarker(done) => a.literal(if done { "[x] " } else { "[ ] " }),
        }
    }
}

/// The language of a fenced code block, when its info string names a plain one.
fn language(info: &str) -> Option<String> {
    let word = info.split_whitespace().next()?;
    let ok = word.len() <= 32
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-#._".contains(c));
    ok.then(|| word.to_owned())
}

/// Link targets Telegram accepts and that cannot run anything: http(s), tg and mailto.
fn safe_href(href: &str) -> bool {
    let lower = href.to_ascii_lowercase();
    ["http://", "https://", "tg://", "mailto:"]
        .iter()
        .any(|p| lower.starts_with(p) && lower.len() > p.len())
        && href.len() <= MAX_HREF
        && !href.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '&' => out.push_str("&amp;"),
        c => out.push(c),
    }
}

fn char_cost(c: char) -> usize {
    match c {
        '<' | '>' => 4,
        '&' => 5,
        c => c.len_utf16(),
    }
}

fn utf16(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Splits the atoms into parts of at most [`PART_BUDGET`] UTF-16 units of HTML each.
fn split(mut atoms: &[Atom]) -> Vec<Part> {
    while let Some((Atom::Break(_), rest)) = atoms.split_last() {
        atoms = rest;
    }
    let mut bodies = Vec::new();
    let mut start = 0;
    let mut open: Vec<Tag> = Vec::new();
    loop {
        while matches!(atoms.get(start), Some(Atom::Break(_))) {
            start += 1;
        }
        if start >= atoms.len() {
            break;
        }
        let end = cut(atoms, start, &open);
        let (html, plain, still_open) = emit(&atoms[start..end], &open);
        if !plain.trim().is_empty() {
            bodies.push((html, plain));
        }
        open = still_open;
        start = end;
    }
    let n = bodies.len();
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, (html, plain))| {
            if n > 1 {
                let mark = format!("({}/{n}) ", i + 1);
                Part {
                    html: format!("{mark}{html}"),
                    plain: format!("{mark}{plain}"),
                }
            } else {
                Part { html, plain }
            }
        })
        .collect()
}

/// Where the part that starts at `start` (with `open` tags open) ends: the whole rest when
/// it fits; otherwise the last paragraph, line or word break in the second half of the room
/// (in that order), else the best break anywhere, else as much as fits.
fn cut(atoms: &[Atom], start: usize, open: &[Tag]) -> usize {
    let mut stack: Vec<&Tag> = open.iter().collect();
    let mut cost: usize = open.iter().map(|t| utf16(&t.open())).sum();
    let mut closing: usize = open.iter().map(|t| utf16(t.close())).sum();
    // The last break of each level: its index and the cost of the part ending before it.
    let mut last: [Option<(usize, usize)>; 3] = [None; 3];
    for (j, atom) in atoms.iter().enumerate().skip(start) {
        match atom {
            Atom::Break(level) => {
                last[*level as usize] = Some((j, cost));
                cost += utf16(level.text());
            }
            Atom::Char(c) => cost += char_cost(*c),
            Atom::Open(tag) => {
                cost += utf16(&tag.open());
                closing += utf16(tag.close());
                stack.push(tag);
            }
            Atom::Close => {
                if let Some(tag) = stack.pop() {
                    cost += utf16(tag.close());
                    closing -= utf16(tag.close());
                }
            }
        }
        if cost + closing > PART_BUDGET {
            let order = [Level::Para, Level::Line, Level::Word];
            let choice = order
                .iter()
                .find_map(|l| last[*l as usize].filter(|&(_, c)| c >= PART_BUDGET / 2))
                .or_else(|| order.iter().find_map(|l| last[*l as usize]))
                .map(|(i, _)| i);
            return match choice {
                Some(i) if i > start => i,
                _ => j.max(start + 1),
            };
        }
    }
    atoms.len()
}

/// The HTML and plain text of `atoms` with `open` tags reopened first and everything still
/// open closed at the end; returns the tags open after them too.
fn emit(atoms: &[Atom], open: &[Tag]) -> (String, String, Vec<Tag>) {
    let mut html: String = open.iter().map(Tag::open).collect();
    let mut plain = String::new();
    let mut stack = open.to_vec();
    for atom in atoms {
        match atom {
            Atom::Char(c) => {
                escape_into(&mut html, *c);
                plain.push(*c);
            }
            Atom::Break(level) => {
                html.push_str(level.text());
                plain.push_str(level.text());
            }
            Atom::Open(tag) => {
                html.push_str(&tag.open());
                stack.push(tag.clone());
            }
            Atom::Close => {
                if let Some(tag) = stack.pop() {
                    html.push_str(tag.close());
                    if let Tag::Link(href) = &tag {
                        plain.push_str(&format!(" ({href})"));
                    }
                }
            }
        }
    }
    for tag in stack.iter().rev() {
        html.push_str(tag.close());
    }
    (html, plain, stack)
}

// ---------------------------------------------------------------------------------------
// The Bot API client.

/// Why a call to the Bot API failed. Every text is scrubbed of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ApiError {
    /// No answer: the connection failed or timed out. Worth another try.
    Network(String),
    /// HTTP 429: wait this long before the next call.
    RateLimited(Duration),
    /// A 5xx, or an answer that is not Telegram's JSON. Worth another try.
    Server(u16, String),
    /// A 4xx other than 429: this request will not succeed as it is.
    Refused(u16, String),
}

impl ApiError {
    fn is_bad_html(&self) -> bool {
        matches!(self, ApiError::Refused(400, d) if d.to_ascii_lowercase().contains("parse entities"))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Network(e) => write!(f, "no answer from the Bot API: {e}"),
            ApiError::RateLimited(d) => {
                write!(
                    f,
                    "HTTP 429: too many requests, retry after {} s",
                    d.as_secs()
                )
            }
            ApiError::Server(code, d) => write!(f, "HTTP {code}: {d}"),
            ApiError::Refused(code, d) => write!(f, "HTTP {code}: {d}"),
        }
    }
}

/// Telegram's answer envelope.
#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    ok: bool,
    result: Option<T>,
    description: Option<String>,
    parameters: Option<ResponseParameters>,
}

#[derive(Deserialize)]
struct ResponseParameters {
    retry_after: Option<u64>,
}

#[derive(Deserialize)]
struct SentMessage {
    message_id: i64,
}

/// One reqwest client (connect and overall timeouts, no redirects) and the base URL.
struct Api {
    client: reqwest::Client,
    base: String,
    token: Token,
}

/// Installs rustls' ring provider as the process default, once, before any client exists.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Api {
    fn new(config: &TelegramConfig) -> Result<Api> {
        let base = reqwest::Url::parse(&config.api_base).map_err(|e| {
            Error::Telegram(format!(
                "IPC_TG_API_BASE {:?} is not a URL: {e}",
                config.token.scrub(&config.api_base)
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Telegram(format!(
                "IPC_TG_API_BASE {:?} is not an http or https URL",
                config.token.scrub(&config.api_base)
            )));
        }
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("t9-ipc/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Telegram(describe(e, &config.token)))?;
        Ok(Api {
            client,
            base: config.api_base.clone(),
            token: config.token.clone(),
        })
    }

    /// Calls `method` with a JSON body; `timeout` overrides the client's for this call.
    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<T, ApiError> {
        let url = format!("{}/bot{}/{method}", self.base, self.token.secret());
        let mut request = self.client.post(url).json(body);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::Network(describe(e, &self.token)))?;
        let status = response.status().as_u16();
        let retry_header = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::Network(describe(e, &self.token)))?;
        let envelope: Option<Envelope<T>> = serde_json::from_slice(&bytes).ok();
        let description = envelope
            .as_ref()
            .and_then(|e| e.description.as_deref())
            .map(|d| self.token.scrub(d))
            .unwrap_or_else(|| "no description".to_owned());
        if status == 429 {
            let seconds = envelope
                .as_ref()
                .and_then(|e| e.parameters.as_ref())
                .and_then(|p| p.retry_after)
                .or(retry_header);
            return Err(ApiError::RateLimited(
                seconds.map_or(DEFAULT_RETRY_AFTER, Duration::from_secs),
            ));
        }
        match envelope {
            Some(Envelope {
                ok: true,
                result: Some(result),
                ..
            }) if (200..300).contains(&status) => Ok(result),
            _ if (400..500).contains(&status) => Err(ApiError::Refused(status, description)),
            None if (200..300).contains(&status) => Err(ApiError::Server(
                status,
                "the answer is not the Bot API's JSON".to_owned(),
            )),
            _ => Err(ApiError::Server(status, description)),
        }
    }

    /// Sends one part to `chat`; returns its Telegram message id.
    async fn send(&self, chat: i64, text: &str, html: bool) -> Result<i64, ApiError> {
        let mut body = json!({
            "chat_id": chat,
            "text": text,
            "link_preview_options": {"is_disabled": true},
        });
        if html {
            body["parse_mode"] = json!("HTML");
        }
        self.call::<SentMessage>("sendMessage", &body, None)
            .await
            .map(|m| m.message_id)
    }
}

/// A reqwest error as one line, without the URL (it holds the token), and scrubbed anyway.
fn describe(err: reqwest::Error, token: &Token) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    token.scrub(&text)
}

/// The delay before retry number `failures` (1 s, 2 s, 4 s, … at most 60 s).
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF)
}

// ---------------------------------------------------------------------------------------
// The bookkeeping under <data>/telegram/.

/// What claiming a message found.
enum Claimed {
    /// This server forwards it; the claim file stays locked until the outcome is written.
    Mine(Claim),
    /// Forwarded (or given up) already.
    Settled,
    /// Another live server is forwarding it now.
    Busy,
}

/// A held claim: the locked claim file, and the parts a previous owner sent already.
struct Claim {
    file: File,
    /// `(part, parts, telegram message id)` from `part i/n id` lines.
    parts: Vec<(usize, usize, i64)>,
}

impl Claim {
    fn part_sent(&self, i: usize, n: usize) -> bool {
        self.parts.iter().any(|&(pi, pn, _)| pi == i && pn == n)
    }

    fn record_part(&mut self, i: usize, n: usize, telegram_id: i64) -> io::Result<()> {
        self.parts.push((i, n, telegram_id));
        self.file
            .write_all(format!("part {}/{n} {telegram_id}\n", i + 1).as_bytes())
    }

    /// Writes the outcome; dropping the claim then releases the lock.
    fn finish(mut self, outcome: &str) -> io::Result<()> {
        self.file
            .write_all(format!("done {outcome}\n").as_bytes())?;
        self.file.sync_data()
    }
}

/// Where a forwarded part came from: what a reply to it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Forwarded {
    chat: i64,
    message_id: i64,
    msg_id: String,
    from: String,
    subject: String,
}

struct Store {
    claims: PathBuf,
    failed: PathBuf,
    replies: PathBuf,
    offset: PathBuf,
    poll_lock: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    Error::io(op, path)
}

impl Store {
    fn open(data_dir: &Path) -> Result<Store> {
        let dir = data_dir.join("telegram");
        let store = Store {
            claims: dir.join("claims"),
            failed: dir.join("failed"),
            replies: dir.join("replies.log"),
            offset: dir.join("offset"),
            poll_lock: dir.join("poll.lock"),
        };
        for d in [&store.claims, &store.failed] {
            fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        Ok(store)
    }

    /// Claims `id` for this server. The claim file appears already locked (it is made and
    /// locked under a temporary name, then hard-linked into place, which fails if the name
    /// exists), so a claim file that is unlocked and has no `done` line belongs to a server
    /// that died: whoever locks it next takes it over.
    fn claim(&self, id: &str) -> Result<Claimed> {
        let path = self.claims.join(id);
        let tmp = self.claims.join(format!(
            ".{id}.{}.{}.tmp",
            std::process::id(),
            mailbox::random_uid()
        ));
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        file.lock().map_err(io_err("locking", &tmp))?;
        let stamp = Local::now().to_rfc3339();
        file.write_all(format!("claimed by pid {} at {stamp}\n", std::process::id()).as_bytes())
            .map_err(io_err("writing", &tmp))?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                return Ok(Claimed::Mine(Claim {
                    file,
                    parts: Vec::new(),
                }));
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                // A file system without hard links: fall back to a plain exclusive create
                // (a dying server's claim can then be taken over by two at once, rarely).
                tracing::debug!(%err, "hard link refused; claiming with create_new");
                drop(file);
                match OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create_new(true)
                    .open(&path)
                {
                    Ok(mut file) => {
                        file.lock().map_err(io_err("locking", &path))?;
                        file.write_all(
                            format!("claimed by pid {} at {stamp}\n", std::process::id())
                                .as_bytes(),
                        )
                        .map_err(io_err("writing", &path))?;
                        return Ok(Claimed::Mine(Claim {
                            file,
                            parts: Vec::new(),
                        }));
                    }
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(Error::io("creating", &path)(err)),
                }
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Claimed::Busy),
            Err(TryLockError::Error(err)) => return Err(Error::io("locking", &path)(err)),
        }
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(io_err("reading", &path))?;
        // Only whole lines count: a line cut by a crash is not an outcome.
        let lines: Vec<&str> = text
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .collect();
        if lines.iter().any(|l| l.starts_with("done ")) {
            return Ok(Claimed::Settled);
        }
        let parts = lines
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("part ")?;
                let (frac, tid) = rest.split_once(' ')?;
                let (i, n) = frac.split_once('/')?;
                let i: usize = i.parse().ok()?;
                Some((i.checked_sub(1)?, n.parse().ok()?, tid.parse().ok()?))
            })
            .collect();
        if !text.is_empty() && !text.ends_with('\n') {
            // End the cut line so the next one starts clean.
            file.write_all(b"\n").map_err(io_err("writing", &path))?;
        }
        file.write_all(
            format!(
                "taken over by pid {} at {}\n",
                std::process::id(),
                Local::now().to_rfc3339()
            )
            .as_bytes(),
        )
        .map_err(io_err("writing", &path))?;
        Ok(Claimed::Mine(Claim { file, parts }))
    }

    /// Remembers a sent part, so a reply to it finds the escalation.
    fn remember(&self, forwarded: &Forwarded) -> Result<()> {
        // One short write in append mode: lines of concurrent writers do not mix.
        let mut line = serde_json::to_string(forwarded).expect("plain strings and numbers");
        line.push('\n');
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.replies)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(io_err("appending to", &self.replies))
    }

    /// The escalation that Telegram message `message_id` in `chat` was a part of.
    fn lookup(&self, chat: i64, message_id: i64) -> Result<Option<Forwarded>> {
        let text = match fs::read_to_string(&self.replies) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(Error::io("reading", &self.replies)(err)),
        };
        Ok(text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Forwarded>(l).ok())
            .find(|f| f.chat == chat && f.message_id == message_id))
    }

    /// Writes `failed/<id>.txt`, replacing it by rename.
    fn record_failure(&self, id: &str, text: &str) -> Result<PathBuf> {
        let path = self.failed.join(format!("{id}.txt"));
        write_replacing(&path, text.as_bytes())?;
        Ok(path)
    }

    fn load_offset(&self) -> Option<i64> {
        fs::read_to_string(&self.offset).ok()?.trim().parse().ok()
    }

    fn save_offset(&self, offset: i64) -> Result<()> {
        write_replacing(&self.offset, format!("{offset}\n").as_bytes())
    }
}

fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", mailbox::random_uid()));
    let written = fs::write(&tmp, bytes)
        .map_err(io_err("writing", &tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("renaming", &tmp)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// A forward that was given up, as `<data>/telegram/failed/<msg_id>.txt` records it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub msg_id: String,
    pub path: PathBuf,
    /// When the record was written (its modification time).
    pub when: Option<DateTime<Local>>,
    /// The record's `last error:` line.
    pub error: String,
}

/// The forwards given up at `since` or later, newest first; for `who` and doctor output.
/// Works whether or not Telegram is configured in this process.
pub fn failures(data_dir: &Path, since: SystemTime) -> Vec<Failure> {
    let dir = data_dir.join("telegram").join("failed");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found: Vec<Failure> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let msg_id = name.strip_suffix(".txt")?.to_owned();
            let modified = entry.metadata().ok()?.modified().ok()?;
            if modified < since {
                return None;
            }
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            let error = text
                .lines()
                .find_map(|l| l.strip_prefix("last error: "))
                .unwrap_or("unknown")
                .to_owned();
            Some(Failure {
                msg_id,
                path: entry.path(),
                when: Some(DateTime::<Local>::from(modified)),
                error,
            })
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.when));
    found
}

// ---------------------------------------------------------------------------------------
// Incoming: what a Telegram message becomes.

#[derive(Debug, Deserialize)]
struct Update {
    message: Option<TgMessage>,
}

#[derive(Debug, Deserialize)]
struct TgMessage {
    chat: Chat,
    from: Option<User>,
    text: Option<String>,
    caption: Option<String>,
    reply_to_message: Option<Replied>,
}

#[derive(Debug, Deserialize)]
struct Chat {
    id: i64,
}

#[derive(Debug, Deserialize)]
struct User {
    #[serde(default)]
    is_bot: bool,
}

#[derive(Debug, Deserialize)]
struct Replied {
    message_id: i64,
}

/// What to do with one incoming message.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    /// Not ours to hear: another chat, or a bot. Logged without its text.
    Ignore(&'static str),
    /// Written to the inbox from `telegram`.
    Deliver {
        to: String,
        subject: String,
        body: String,
        reply_to: Option<String>,
    },
    /// Told back to the person, in the configured chat.
    Notice(String),
}

const HELP: &str = "This bot forwards t9-ipc escalations. Reply to one to answer the session \
that sent it, or write \"@name your message\" to write to a session (\"@all\" reaches every \
session).";

/// Decides what an incoming message becomes. `lookup` finds the escalation a Telegram
/// message id was part of.
fn inbound(
    m: &TgMessage,
    chat: Option<i64>,
    lookup: impl FnOnce(i64) -> Option<Forwarded>,
) -> Inbound {
    if chat != Some(m.chat.id) {
        return Inbound::Ignore("a chat other than IPC_TG_CHAT");
    }
    if m.from.as_ref().is_some_and(|u| u.is_bot) {
        return Inbound::Ignore("a bot");
    }
    let Some(text) = m.text.as_deref().or(m.caption.as_deref()) else {
        return Inbound::Notice("Not delivered: only text reaches the sessions.".to_owned());
    };
    let text = text.trim();
    if let Some(replied) = &m.reply_to_message
        && let Some(f) = lookup(replied.message_id)
    {
        if message::check_name(&f.from).is_err() {
            return Inbound::Notice(format!(
                "Not delivered: the escalation came from {:?}, which is no session name.",
                f.from
            ));
        }
        return Inbound::Deliver {
            to: f.from,
            subject: cut_chars(&format!("re: {}", f.subject), message::MAX_SUBJECT_CHARS),
            body: text.to_owned(),
            reply_to: Some(f.msg_id),
        };
    }
    if let Some(rest) = text.strip_prefix('@') {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (name, body) = rest.split_at(end);
        let body = body.trim();
        if body.is_empty() {
            return Inbound::Notice(format!("Not delivered: write a message after @{name}."));
        }
        let to = if name == BROADCAST {
            BROADCAST.to_owned()
        } else if let Err(why) = message::check_name(name) {
            return Inbound::Notice(format!("Not delivered: @{name} is no session name: {why}."));
        } else {
            name.to_owned()
        };
        return Inbound::Deliver {
            to,
            subject: summary(body),
            body: body.to_owned(),
            reply_to: None,
        };
    }
    if text.starts_with('/') {
        return Inbound::Notice(HELP.to_owned());
    }
    Inbound::Notice(format!("Not delivered. {HELP}"))
}

/// `s` cut to `max` characters, with `…` when cut.
fn cut_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// A subject for a message the person wrote: its first line, shortened. The body keeps the
/// whole text, so nothing is lost.
fn summary(text: &str) -> String {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    cut_chars(first.unwrap_or("(no text)"), 80)
}

// ---------------------------------------------------------------------------------------
// The service.

/// Telegram for one server: the forward queue and the reply path. Cheap to clone.
#[derive(Clone)]
pub struct Telegram {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api,
    chat: Option<i64>,
    give_up_after: Duration,
    store: Store,
    /// Its own handle on the mailbox: reads recent files, writes the person's replies.
    mailbox: Mailbox,
    /// Escalations queued or settled in this process, so each is handled once here.
    offered: Mutex<HashSet<String>>,
    queue: mpsc::UnboundedSender<Arc<Message>>,
    queued: Mutex<Option<mpsc::UnboundedReceiver<Arc<Message>>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Telegram {
    /// Builds the client and opens `<data_dir>/telegram/`. No network traffic: that starts
    /// with [`Telegram::forward`] and [`Telegram::answer`].
    pub fn new(config: &TelegramConfig, data_dir: &Path) -> Result<Telegram> {
        let api = Api::new(config)?;
        let store = Store::open(data_dir)?;
        let mailbox = Mailbox::open(data_dir)?;
        let (queue, queued) = mpsc::unbounded_channel();
        Ok(Telegram {
            inner: Arc::new(Inner {
                api,
                chat: config.chat,
                give_up_after: config.give_up_after,
                store,
                mailbox,
                offered: Mutex::new(HashSet::new()),
                queue,
                queued: Mutex::new(Some(queued)),
            }),
        })
    }

    /// True when escalations can be forwarded (`IPC_TG_CHAT` is set).
    pub fn forwards(&self) -> bool {
        self.inner.chat.is_some()
    }

    /// Offers a message that appeared in the inbox, whoever wrote it. Never blocks: an
    /// escalation not seen before in this process is queued for [`Telegram::forward`];
    /// anything else is ignored. Returns true when it was queued.
    pub fn offer(&self, msg: &Arc<Message>) -> bool {
        if self.inner.chat.is_none() || !is_escalation(&msg.front) {
            return false;
        }
        if !locked(&self.inner.offered).insert(msg.id.clone()) {
            return false;
        }
        // The receiver lives as long as the forwarder; after it, nothing needs sending.
        self.inner.queue.send(msg.clone()).is_ok()
    }

    /// Offers every inbox message whose file name stamp is within the last 24 hours
    /// ([`CATCH_UP_WINDOW`]): at start, this finishes forwards that were pending when a
    /// server stopped, and sends escalations written while none ran. Blocks (reads files);
    /// cheap when repeated, as only new files are read. Returns how many were queued.
    pub fn catch_up(&self) -> Result<usize> {
        let window = TimeDelta::from_std(CATCH_UP_WINDOW).expect("24 hours fit a TimeDelta");
        let recent = self.inner.mailbox.recent(Local::now() - window)?;
        Ok(recent.iter().filter(|m| self.offer(m)).count())
    }

    /// Forwards queued escalations, one at a time, until `cancel`. Call it once (a second
    /// call returns at once). A forward cut short by `cancel` stays claimed by nobody: the
    /// next server to start takes it over.
    pub async fn forward(&self, cancel: CancellationToken) {
        let Some(mut queued) = locked(&self.inner.queued).take() else {
            tracing::warn!("the Telegram forwarder runs already");
            return;
        };
        let Some(chat) = self.inner.chat else {
            tracing::warn!(
                "IPC_TG_TOKEN is set but IPC_TG_CHAT is not: escalations are not forwarded"
            );
            return;
        };
        loop {
            let msg = tokio::select! {
                () = cancel.cancelled() => return,
                msg = queued.recv() => match msg {
                    Some(msg) => msg,
                    None => return,
                },
            };
            self.forward_one(chat, msg, &cancel).await;
        }
    }

    /// Runs blocking bookkeeping off the async threads.
    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> R + Send + 'static,
    ) -> Option<R> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || work(&inner)).await {
            Ok(r) => Some(r),
            Err(err) => {
                tracing::warn!(%err, "Telegram bookkeeping failed");
                None
            }
        }
    }

    fn forget(&self, id: &str) {
        locked(&self.inner.offered).remove(id);
    }

    async fn forward_one(&self, chat: i64, msg: Arc<Message>, cancel: &CancellationToken) {
        let id = msg.id.clone();
        let claimed = {
            let id = id.clone();
            self.blocking(move |inner| inner.store.claim(&id)).await
        };
        let mut claim = match claimed {
            Some(Ok(Claimed::Mine(claim))) => claim,
            Some(Ok(Claimed::Settled)) => {
                tracing::debug!(msg_id = %id, "already forwarded to Telegram");
                return;
            }
            Some(Ok(Claimed::Busy)) => {
                // Another live server sends it. Forget it here, so that if that server dies
                // a later offer (a rescan) can take the claim over.
                tracing::debug!(msg_id = %id, "another server forwards it");
                self.forget(&id);
                return;
            }
            Some(Err(err)) => {
                tracing::warn!(msg_id = %id, err = %format!("{err:#}"), "cannot claim the escalation; a later rescan tries again");
                self.forget(&id);
                return;
            }
            None => {
                self.forget(&id);
                return;
            }
        };
        let parts = render(&msg);
        let n = parts.len();
        let started = Instant::now();
        let deadline = started + self.inner.give_up_after;
        let mut tries = 0u32;
        let mut failures = 0u32;
        for (i, part) in parts.iter().enumerate() {
            if claim.part_sent(i, n) {
                continue;
            }
            let mut html = true;
            let sent = loop {
                tries += 1;
                let text = if html { &part.html } else { &part.plain };
                let result = tokio::select! {
                    () = cancel.cancelled() => return,
                    r = self.inner.api.send(chat, text, html) => r,
                };
                let err = match result {
                    Ok(telegram_id) => break Ok(telegram_id),
                    Err(err) if err.is_bad_html() && html => {
                        tracing::warn!(msg_id = %id, part = i + 1, %err, "Telegram refused the HTML; sending the part as plain text");
                        html = false;
                        continue;
                    }
                    Err(err) => err,
                };
                let delay = match &err {
                    ApiError::Refused(..) => break Err(err),
                    ApiError::RateLimited(wait) => *wait,
                    ApiError::Network(_) | ApiError::Server(..) => {
                        failures += 1;
                        backoff(failures - 1)
                    }
                };
                if Instant::now() + delay > deadline {
                    break Err(err);
                }
                tracing::info!(msg_id = %id, %err, retry_in_ms = delay.as_millis() as u64, "forwarding to Telegram failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            };
            match sent {
                Ok(telegram_id) => {
                    let forwarded = Forwarded {
                        chat,
                        message_id: telegram_id,
                        msg_id: id.clone(),
                        from: msg.front.from.clone(),
                        subject: msg.front.subject.clone(),
                    };
                    let kept = self
                        .blocking(move |inner| {
                            let remembered = inner.store.remember(&forwarded);
                            let recorded = claim.record_part(i, n, telegram_id);
                            (claim, remembered, recorded)
                        })
                        .await;
                    let Some((back, remembered, recorded)) = kept else {
                        return;
                    };
                    claim = back;
                    if let Err(err) = remembered {
                        tracing::warn!(msg_id = %id, err = %format!("{err:#}"), "a reply to this part will not find its escalation");
                    }
                    if let Err(err) = recorded {
                        tracing::warn!(msg_id = %id, %err, "recording a sent part");
                    }
                }
                Err(err) => {
                    let sent = claim.parts.iter().filter(|p| p.1 == n).count();
                    let record = format!(
                        "msg_id: {id}\nfrom: {}\nsubject: {}\ngave up: {} after {tries} tries over {} s\nparts sent: {sent} of {n}\nlast error: {err}\n",
                        msg.front.from,
                        message::one_line(&msg.front.subject),
                        Local::now().format(message::TIME_FORMAT),
                        started.elapsed().as_secs(),
                    );
                    let outcome = self
                        .blocking(move |inner| {
                            let path = inner.store.record_failure(&msg.id, &record);
                            (path, claim.finish("failed"))
                        })
                        .await;
                    let path = match outcome {
                        Some((Ok(path), _)) => path.display().to_string(),
                        Some((Err(e), _)) => format!("not recorded: {e:#}"),
                        None => "not recorded".to_owned(),
                    };
                    tracing::warn!(msg_id = %id, %err, tries, record = %path, "gave up forwarding an escalation to Telegram");
                    return;
                }
            }
        }
        let finished = self.blocking(move |_| claim.finish("sent")).await;
        if let Some(Err(err)) = finished {
            tracing::warn!(msg_id = %id, %err, "recording the forward as done");
        }
        tracing::info!(msg_id = %id, parts = n, tries, ms = started.elapsed().as_millis() as u64, "forwarded to Telegram");
    }

    /// The reply path, until `cancel`: waits to be elected (the lock on
    /// `<data>/telegram/poll.lock`, held by one server at a time and taken by a waiting one
    /// when its holder exits), then long-polls `getUpdates` from the stored offset and turns
    /// what the person writes in the configured chat into inbox messages from `telegram`.
    /// Waiting costs nothing: a blocking thread sleeps in the lock call.
    pub async fn answer(&self, cancel: CancellationToken) {
        let path = self.inner.store.poll_lock.clone();
        let waiting = tokio::task::spawn_blocking(move || -> io::Result<File> {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok(file)
        });
        let lock = tokio::select! {
            () = cancel.cancelled() => return,
            lock = waiting => lock,
        };
        let _lock = match lock {
            Ok(Ok(file)) => file,
            Ok(Err(err)) => {
                tracing::warn!(%err, "cannot take the Telegram poll lock; replies are read by other servers only");
                return;
            }
            Err(err) => {
                tracing::warn!(%err, "waiting for the Telegram poll lock");
                return;
            }
        };
        tracing::info!(chat = ?self.inner.chat, "this server now reads the replies from Telegram");
        let mut offset = self
            .blocking(|inner| inner.store.load_offset())
            .await
            .flatten();
        let mut failures = 0u32;
        let mut last_error = String::new();
        loop {
            let mut body = json!({"timeout": POLL_SECONDS, "allowed_updates": ["message"]});
            if let Some(offset) = offset {
                body["offset"] = json!(offset);
            }
            let timeout = Duration::from_secs(POLL_SECONDS) + REQUEST_TIMEOUT;
            let got = tokio::select! {
                () = cancel.cancelled() => return,
                got = self.inner.api.call::<Vec<Value>>("getUpdates", &body, Some(timeout)) => got,
            };
            match got {
                Ok(updates) => {
                    failures = 0;
                    last_error.clear();
                    if updates.is_empty() {
                        continue;
                    }
                    let taken = self
                        .blocking(move |inner| inner.take_updates(updates, offset))
                        .await;
                    let Some((next, notices)) = taken else {
                        continue;
                    };
                    offset = next;
                    for (chat, text) in notices {
                        if let Err(err) = self.inner.api.send(chat, &text, false).await {
                            tracing::warn!(%err, "telling the person a message was not delivered");
                        }
                    }
                }
                Err(err) => {
                    let delay = match &err {
                        ApiError::RateLimited(wait) => *wait,
                        ApiError::Refused(..) => MAX_BACKOFF,
                        _ => {
                            failures += 1;
                            backoff(failures - 1)
                        }
                    };
                    let text = err.to_string();
                    if text != last_error {
                        tracing::warn!(err = %text, retry_in_ms = delay.as_millis() as u64, "reading replies from Telegram failed");
                        last_error = text;
                    } else {
                        tracing::debug!(err = %text, "reading replies from Telegram failed again");
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

impl Inner {
    /// Handles a batch of updates; returns the next offset and the notices to send.
    fn take_updates(
        &self,
        updates: Vec<Value>,
        mut offset: Option<i64>,
    ) -> (Option<i64>, Vec<(i64, String)>) {
        let mut notices = Vec::new();
        for value in updates {
            let Some(update_id) = value.get("update_id").and_then(Value::as_i64) else {
                tracing::warn!("skipped a Telegram update without an update_id");
                continue;
            };
            offset = Some(offset.map_or(update_id + 1, |o| o.max(update_id + 1)));
            let update = match serde_json::from_value::<Update>(value) {
                Ok(update) => update,
                Err(err) => {
                    tracing::warn!(update_id, %err, "skipped a Telegram update this version does not understand");
                    continue;
                }
            };
            let Some(m) = update.message else {
                tracing::debug!(update_id, "skipped a Telegram update that is no message");
                continue;
            };
            let action = inbound(&m, self.chat, |message_id| {
                self.store
                    .lookup(m.chat.id, message_id)
                    .unwrap_or_else(|err| {
                        tracing::warn!(err = %format!("{err:#}"), "reading replies.log");
                        None
                    })
            });
            match action {
                Inbound::Ignore(why) => {
                    // The chat id helps whoever sets IPC_TG_CHAT; the text is not logged.
                    tracing::warn!(
                        update_id,
                        chat_id = m.chat.id,
                        from = why,
                        "ignored a Telegram message (its text is not logged)"
                    );
                }
                Inbound::Notice(text) => notices.push((m.chat.id, text)),
                Inbound::Deliver {
                    to,
                    subject,
                    body,
                    reply_to,
                } => {
                    // A reply joins the thread of the escalation it answers.
                    let thread = reply_to.as_deref().map(|id| {
                        self.mailbox
                            .get(id)
                            .or_else(|| self.mailbox.get_archived(id))
                            .and_then(|m| m.front.thread.clone())
                            .unwrap_or_else(|| id.to_owned())
                    });
                    let draft = Draft {
                        from: TELEGRAM,
                        to: &to,
                        kind: if to == BROADCAST { "broadcast" } else { "ipc" },
                        subject: &subject,
                        priority: "normal",
                        reply_to: reply_to.as_deref(),
                        thread: thread.as_deref(),
                        body: &body,
                        ..Draft::default()
                    };
                    match self.mailbox.write(&draft, Local::now()) {
                        Ok(msg_id) => {
                            tracing::info!(update_id, %msg_id, %to, "a message from Telegram was delivered");
                        }
                        Err(err) => {
                            tracing::warn!(update_id, err = %format!("{err:#}"), "writing a message from Telegram");
                            notices.push((
                                m.chat.id,
                                format!("Not delivered: the mailbox could not be written ({err})."),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(offset) = offset
            && let Err(err) = self.store.save_offset(offset)
        {
            tracing::warn!(err = %format!("{err:#}"), "saving the Telegram offset");
        }
        (offset, notices)
    }
}

impl fmt::Debug for Telegram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telegram")
            .field("chat", &self.inner.chat)
            .field("api_base", &self.inner.api.base)
            .field("token", &self.inner.api.token)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(subject: &str, body: &str) -> Message {
        Message {
            id: "20260406T153000000000-0a1b2c3d-alpha-human-x".to_owned(),
            front: FrontMatter {
                from: "alpha".into(),
                to: "human".into(),
                kind: "escalation".into(),
                subject: subject.into(),
                priority: "normal".into(),
                created: "2026-04-06 15:30:00".into(),
                ..FrontMatter::default()
            },
            body: body.into(),
        }
    }

    /// The body's HTML alone (no header or footer).
    fn body_html(markdown_text: &str) -> String {
        let mut a = Atoms::default();
        markdown(&mut a, markdown_text);
        let parts = split(&a.atoms);
        assert_eq!(parts.len(), 1, "{parts:?}");
        parts[0].html.clone()
    }

    /// What Telegram shows for an HTML text: tags dropped, entities decoded.
    fn visible(html: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in html.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        out.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
    }

    /// Checks that the tags of `html` are Telegram's, balanced and properly nested.
    fn assert_balanced(html: &str) {
        let mut stack = Vec::new();
        let mut rest = html;
        while let Some(at) = rest.find('<') {
            let end = rest[at..].find('>').expect("tag closed") + at;
            let tag = &rest[at + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.to_owned()), "in {html}");
            } else {
                let name = tag.split(' ').next().unwrap().to_owned();
                assert!(
                    ["b", "i", "code", "pre", "a"].contains(&name.as_str()),
                    "tag {name} in {html}"
                );
                stack.push(name);
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?} in {html}");
    }

    #[test]
    fn markdown_becomes_telegram_html() {
        let cases = [
            ("**bold** and *it*", "<b>bold</b> and <i>it</i>"),
            ("__b__ _i_", "<b>b</b> <i>i</i>"),
            ("use `a < b && c`", "use <code>a &lt; b &amp;&amp; c</code>"),
            (
                "```rust\nfn main() {}\n\nlet x = 1;\n```",
                "<pre><code class=\"language-rust\">fn main() {}\n\nlet x = 1;</code></pre>",
            ),
            ("    indented\n    code", "<pre>indented\ncode</pre>"),
            (
                "[docs](https://x.org/a?b=1&c=\"2\")",
                "<a href=\"https://x.org/a?b=1&amp;c=&quot;2&quot;\">docs</a>",
            ),
            (
                "<https://x.org>",
                "<a href=\"https://x.org\">https://x.org</a>",
            ),
            ("[run](javascript:alert(1))", "run (javascript:alert(1))"),
            ("[rel](docs/api.md)", "rel (docs/api.md)"),
            (
                "<b>raw</b> & <script>",
                "&lt;b&gt;raw&lt;/b&gt; &amp; &lt;script&gt;",
            ),
            ("# Title\ntext", "<b>Title</b>\n\ntext"),
            ("- one\n- two\n\nafter", "• one\n• two\n\nafter"),
            ("3. three\n4. four", "3. three\n4. four"),
            ("- a\n  - b", "• a\n  • b"),
            ("> quoted\n> more", "&gt; quoted\n&gt; more"),
            ("line one\nline two", "line one\nline two"),
            ("a\n\n---\n\nb", "a\n\n———\n\nb"),
            ("~~kept~~ | t |", "~~kept~~ | t |"),
            (
                "**bold [link](https://a.b) `c`**",
                "<b>bold <a href=\"https://a.b\">link</a> <code>c</code></b>",
            ),
        ];
        for (md, want) in cases {
            assert_eq!(body_html(md), want, "{md:?}");
            assert_balanced(want);
        }
    }

    #[test]
    fn deep_nesting_stops_adding_tags() {
        let md = format!("{}x{}", "*a **b ".repeat(20), "** a*".repeat(20));
        let html = body_html(&md);
        assert_balanced(&html);
        assert!(html.matches("<i>").count() + html.matches("<b>").count() <= MAX_INLINE_DEPTH);
    }

    #[test]
    fn a_message_shows_subject_sender_body_and_how_to_answer() {
        let mut m = msg("disk <full> & more", "see **/var**");
        m.front.to = "beta".into();
        m.front.priority = "critical".into();
        let parts = render(&m);
        assert_eq!(parts.len(), 1);
        assert_eq!(
            parts[0].html,
            "<b>disk &lt;full&gt; &amp; more</b>\n<i>from alpha to beta · critical</i>\n\n\
             see <b>/var</b>\n\n<i>Reply to this message to answer alpha.</i>"
        );
        assert_eq!(
            parts[0].plain,
            "disk <full> & more\nfrom alpha to beta · critical\n\nsee /var\n\nReply to this message to answer alpha."
        );
        let human = render(&msg("s", ""));
        assert_eq!(
            human[0].html,
            "<b>s</b>\n<i>from alpha</i>\n\n<i>Reply to this message to answer alpha.</i>"
        );
    }

    fn check_parts(parts: &[Part], source_words: &[String]) {
        assert!(parts.len() > 1);
        let mut seen = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            assert!(
                utf16(&part.html) <= MAX_MESSAGE,
                "part {i}: {}",
                utf16(&part.html)
            );
            assert!(utf16(&part.plain) <= utf16(&part.html));
            let mark = format!("({}/{}) ", i + 1, parts.len());
            assert!(part.html.starts_with(&mark), "{}", &part.html[..20]);
            assert_balanced(&part.html[mark.len()..]);
            seen.extend(
                visible(&part.html[mark.len()..])
                    .split_whitespace()
                    .map(str::to_owned),
            );
        }
        // Every word arrives, in order, none cut.
        let pos = seen
            .iter()
            .position(|w| *w == source_words[0])
            .expect("first word");
        assert_eq!(&seen[pos..pos + source_words.len()], source_words);
    }

    #[test]
    fn long_texts_split_at_paragraphs_under_the_limit() {
        let paragraphs: Vec<String> = (0..40)
            .map(|p| {
                (0..30)
                    .map(|w| format!("p{p}w{w}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let body = paragraphs.join("\n\n");
        let parts = render(&msg("long", &body));
        let words: Vec<String> = body.split_whitespace().map(str::to_owned).collect();
        check_parts(&parts, &words);
        // Cut between paragraphs: each part ends with a paragraph's last word.
        for part in &parts[..parts.len() - 1] {
            let last = visible(&part.html)
                .split_whitespace()
                .last()
                .unwrap()
                .to_owned();
            assert!(last.ends_with("w29"), "{last}");
        }
        assert!(utf16(&parts[0].html) > PART_BUDGET / 2);
    }

    #[test]
    fn a_long_code_block_splits_at_lines_and_stays_a_code_block() {
        let lines: Vec<String> = (0..600).map(|i| format!("let v{i} = a < b;")).collect();
        let body = format!("intro **bold\n\n```rust\n{}\n```", lines.join("\n"));
        let parts = render(&msg("code", &body));
        check_parts(
            &parts,
            &lines
                .iter()
                .flat_map(|l| l.split_whitespace().map(str::to_owned))
                .collect::<Vec<_>>(),
        );
        for part in &parts[1..] {
            assert!(
                part.html
                    .contains("<pre><code class=\"language-rust\">let v"),
                "a continued code block reopens its tags: {}",
                &part.html[..60]
            );
        }
        // Lines are whole.
        for part in &parts {
            for line in visible(&part.html).lines() {
                if let Some(rest) = line.strip_prefix("let v") {
                    assert!(rest.ends_with("a < b;"), "{line}");
                }
            }
        }
    }

    #[test]
    fn text_without_spaces_is_cut_hard_but_whole_and_entities_stay_whole() {
        let body = "&<>".repeat(3000) + &"é🙂".repeat(2000);
        let parts = render(&msg("blob", &body));
        let mut all = String::new();
        for (i, part) in parts.iter().enumerate() {
            assert!(utf16(&part.html) <= MAX_MESSAGE);
            let mark = format!("({}/{}) ", i + 1, parts.len());
            all.push_str(&visible(&part.html[mark.len()..]));
        }
        assert!(all.contains(&body), "text lost or changed");
        let long_link = format!("[x](https://a.b/{})", "y".repeat(5000));
        for part in render(&msg("l", &long_link)) {
            assert!(utf16(&part.html) <= MAX_MESSAGE);
        }
    }

    #[test]
    fn the_token_is_redacted() {
        let t = Token::new("123456:ABC-secret");
        assert_eq!(format!("{t}"), "<redacted>");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(
            t.scrub("GET http://h/bot123456:ABC-secret/x and bot123456%3AABC-secret"),
            "GET http://h/bot<redacted>/x and bot<redacted>"
        );
        let config = TelegramConfig {
            token: t,
            chat: Some(1),
            api_base: "http://127.0.0.1:9".into(),
            give_up_after: Duration::from_secs(1),
        };
        assert!(!format!("{config:?}").contains("secret"));
    }

    #[tokio::test]
    async fn reqwest_errors_lose_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let api = Api::new(&TelegramConfig {
            token: Token::new("999:SECRET"),
            chat: Some(1),
            api_base: format!("http://127.0.0.1:{port}"),
            give_up_after: Duration::from_secs(1),
        })
        .unwrap();
        let err = api.send(1, "x", false).await.unwrap_err();
        assert!(matches!(err, ApiError::Network(_)), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains("999"), "{text}");
    }

    #[test]
    fn escalations() {
        let mut m = msg("s", "");
        assert!(is_escalation(&m.front));
        m.front.kind = "ipc".into();
        assert!(!is_escalation(&m.front));
        m.front.priority = "Critical".into();
        assert!(is_escalation(&m.front));
        m.front.from = "telegram".into();
        assert!(!is_escalation(&m.front), "the person's words never go back");
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        let secs: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    fn tg(chat: i64, text: &str, reply_to: Option<i64>) -> TgMessage {
        TgMessage {
            chat: Chat { id: chat },
            from: Some(User { is_bot: false }),
            text: Some(text.to_owned()),
            caption: None,
            reply_to_message: reply_to.map(|message_id| Replied { message_id }),
        }
    }

    fn forwarded(message_id: i64) -> Option<Forwarded> {
        (message_id == 77).then(|| Forwarded {
            chat: 5,
            message_id: 77,
            msg_id: "ID".into(),
            from: "alpha".into(),
            subject: "disk full".into(),
        })
    }

    #[test]
    fn what_the_person_writes_becomes() {
        assert_eq!(
            inbound(&tg(6, "@alpha hi", None), Some(5), forwarded),
            Inbound::Ignore("a chat other than IPC_TG_CHAT")
        );
        assert_eq!(
            inbound(&tg(5, "x", Some(77)), None, forwarded),
            Inbound::Ignore("a chat other than IPC_TG_CHAT")
        );
        let mut bot = tg(5, "@alpha hi", None);
        bot.from = Some(User { is_bot: true });
        assert_eq!(inbound(&bot, Some(5), forwarded), Inbound::Ignore("a bot"));
        assert_eq!(
            inbound(
                &tg(5, " use the backup\n\ndisk ", Some(77)),
                Some(5),
                forwarded
            ),
            Inbound::Deliver {
                to: "alpha".into(),
                subject: "re: disk full".into(),
                body: "use the backup\n\ndisk".into(),
                reply_to: Some("ID".into()),
            }
        );
        assert_eq!(
            inbound(
                &tg(5, "@beta restart the job\nnow", None),
                Some(5),
                forwarded
            ),
            Inbound::Deliver {
                to: "beta".into(),
                subject: "restart the job".into(),
                body: "restart the job\nnow".into(),
                reply_to: None,
            }
        );
        // A reply to something else, with a mention, goes by the mention.
        assert!(matches!(
            inbound(&tg(5, "@beta hi", Some(1)), Some(5), forwarded),
            Inbound::Deliver { to, .. } if to == "beta"
        ));
        assert!(matches!(
            inbound(&tg(5, "@all hi", None), Some(5), forwarded),
            Inbound::Deliver { to, .. } if to == "all"
        ));
        for text in ["hello", "/start", "@x hi", "@beta", "@human hi"] {
            assert!(
                matches!(
                    inbound(&tg(5, text, None), Some(5), forwarded),
                    Inbound::Notice(_)
                ),
                "{text}"
            );
        }
        let long = format!("@beta {}", "word ".repeat(100));
        let Inbound::Deliver { subject, body, .. } =
            inbound(&tg(5, &long, None), Some(5), forwarded)
        else {
            panic!()
        };
        assert_eq!(subject.chars().count(), 80);
        assert_eq!(body, long[6..].trim());
    }

    #[test]
    fn claims_are_exclusive_and_a_dead_claim_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let Claimed::Mine(mut first) = store.claim("m1").unwrap() else {
            panic!("the first claim is mine")
        };
        assert!(matches!(store.claim("m1").unwrap(), Claimed::Busy));
        first.record_part(0, 2, 41).unwrap();
        // The holder dies (its lock goes with its file) before it is done.
        drop(first);
        let Claimed::Mine(second) = store.claim("m1").unwrap() else {
            panic!("an abandoned claim is taken over")
        };
        assert!(second.part_sent(0, 2));
        assert!(!second.part_sent(1, 2));
        second.finish("sent").unwrap();
        assert!(matches!(store.claim("m1").unwrap(), Claimed::Settled));
        let names: Vec<_> = fs::read_dir(&store.claims)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["m1"], "no temporary files are left");
    }

    #[test]
    fn replies_find_their_escalation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.lookup(5, 77).unwrap(), None);
        let f = forwarded(77).unwrap();
        store.remember(&f).unwrap();
        store
            .remember(&Forwarded {
                chat: 6,
                ..f.clone()
            })
            .unwrap();
        assert_eq!(store.lookup(5, 77).unwrap(), Some(f));
        assert_eq!(store.lookup(5, 78).unwrap(), None);
        assert_eq!(store.load_offset(), None);
        store.save_offset(12).unwrap();
        assert_eq!(store.load_offset(), Some(12));
    }
}
