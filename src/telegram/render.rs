//! Rendering: a message's markdown to Telegram's HTML subset, split into parts that fit.

use pulldown_cmark::{CodeBlockKind, Event, LinkType, Options, Parser, Tag as Md, TagEnd};

use crate::mailbox::Message;
use crate::message;

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
    let mut writer = Markdown {
        a,
        lists: Vec::new(),
        quote: 0,
        in_code_block: false,
        inline: Vec::new(),
    };
    for event in Parser::new_ext(text, Options::empty()) {
        writer.event(event);
    }
}

/// The state of one markdown text being turned into atoms.
struct Markdown<'a> {
    a: &'a mut Atoms,
    /// The open lists, innermost last: the next number of an ordered one.
    lists: Vec<Option<u64>>,
    /// How many block quotes are open.
    quote: usize,
    in_code_block: bool,
    /// What the end of each open inline element writes; its `Close`s are the open tags.
    inline: Vec<Ending>,
}

impl Markdown<'_> {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(end) => self.end(end),
            Event::Text(t) if self.in_code_block => self.a.code(&t),
            Event::Text(t) | Event::Html(t) | Event::InlineHtml(t) => self.a.prose(&t),
            Event::Code(t) => {
                if self.depth() < MAX_INLINE_DEPTH {
                    self.a.atoms.push(Atom::Open(Tag::Code));
                    self.a.literal(&t);
                    self.a.atoms.push(Atom::Close);
                } else {
                    self.a.literal(&t);
                }
            }
            Event::InlineMath(t) | Event::DisplayMath(t) => self.a.literal(&t),
            Event::SoftBreak | Event::HardBreak => {
                self.a.brk(Level::Line);
                self.quote_mark();
            }
            Event::Rule => {
                self.a.brk(Level::Para);
                self.a.literal("———");
                self.a.brk(Level::Para);
            }
            Event::FootnoteReference(label) => self.a.literal(&format!("[^{label}]")),
            Event::TaskListMarker(done) => self.a.literal(if done { "[x] " } else { "[ ] " }),
        }
    }

    fn start(&mut self, tag: Md<'_>) {
        match tag {
            Md::Paragraph => self.quote_mark(),
            Md::Heading { .. } => {
                self.a.brk(Level::Para);
                self.quote_mark();
                self.open_inline(Tag::Bold);
            }
            Md::BlockQuote(_) => {
                self.a.brk(Level::Para);
                self.quote += 1;
            }
            Md::CodeBlock(kind) => {
                self.a.brk(Level::Para);
                let lang = match kind {
                    CodeBlockKind::Fenced(info) => language(&info),
                    CodeBlockKind::Indented => None,
                };
                self.a.atoms.push(Atom::Open(Tag::Pre(lang)));
                self.in_code_block = true;
            }
            Md::HtmlBlock => self.a.brk(Level::Para),
            Md::List(start) => {
                self.a.brk(self.list_break());
                self.lists.push(start);
            }
            Md::Item => self.item(),
            Md::Emphasis => self.open_inline(Tag::Italic),
            Md::Strong => self.open_inline(Tag::Bold),
            Md::Link {
                link_type,
                dest_url,
                ..
            }
            | Md::Image {
                link_type,
                dest_url,
                ..
            } => self.link(link_type, &dest_url),
            _ => {}
        }
    }

    fn end(&mut self, end: TagEnd) {
        match end {
            TagEnd::Paragraph | TagEnd::HtmlBlock => self.a.brk(Level::Para),
            TagEnd::Heading(_) => {
                self.close_inline();
                self.a.brk(Level::Para);
            }
            TagEnd::BlockQuote(_) => {
                self.quote = self.quote.saturating_sub(1);
                self.a.brk(Level::Para);
            }
            TagEnd::CodeBlock => {
                if let Some(Atom::Break(_)) = self.a.atoms.last() {
                    self.a.atoms.pop();
                }
                self.a.atoms.push(Atom::Close);
                self.in_code_block = false;
                self.a.brk(Level::Para);
            }
            TagEnd::List(_) => {
                self.lists.pop();
                self.a.brk(self.list_break());
            }
            TagEnd::Item => self.a.brk(Level::Line),
            TagEnd::Emphasis | TagEnd::Strong | TagEnd::Link | TagEnd::Image => {
                self.close_inline();
            }
            _ => {}
        }
    }

    /// Around a list: a paragraph break at the outermost level, a line break inside a list.
    fn list_break(&self) -> Level {
        if self.lists.is_empty() {
            Level::Para
        } else {
            Level::Line
        }
    }

    /// A list item's start: its own line, indented by depth, with `• ` or its number.
    fn item(&mut self) {
        self.a.brk(Level::Line);
        self.quote_mark();
        self.a
            .literal(&"  ".repeat(self.lists.len().saturating_sub(1)));
        let marker = match self.lists.last_mut() {
            Some(Some(n)) => {
                let m = format!("{n}. ");
                *n += 1;
                m
            }
            _ => "• ".to_owned(),
        };
        self.a.literal(&marker);
    }

    /// A link or an image: an `<a>` when its target is safe, else its text and the target.
    fn link(&mut self, link_type: LinkType, dest_url: &str) {
        let href = if link_type == LinkType::Email && !dest_url.contains(':') {
            format!("mailto:{dest_url}")
        } else {
            dest_url.to_owned()
        };
        if safe_href(&href) && self.depth() < MAX_INLINE_DEPTH {
            self.open_inline(Tag::Link(href));
        } else if matches!(link_type, LinkType::Autolink | LinkType::Email) || dest_url.is_empty() {
            // The text is the address already.
            self.inline.push(Ending::Nothing);
        } else {
            self.inline.push(Ending::Suffix(format!(" ({dest_url})")));
        }
    }

    /// How many inline tags are open.
    fn depth(&self) -> usize {
        self.inline
            .iter()
            .filter(|e| matches!(e, Ending::Close))
            .count()
    }

    fn quote_mark(&mut self) {
        if self.quote > 0 {
            self.a.literal(&"> ".repeat(self.quote));
        }
    }

    fn open_inline(&mut self, tag: Tag) {
        if self.depth() < MAX_INLINE_DEPTH {
            self.a.atoms.push(Atom::Open(tag));
            self.inline.push(Ending::Close);
        } else {
            self.inline.push(Ending::Nothing);
        }
    }

    fn close_inline(&mut self) {
        match self.inline.pop() {
            Some(Ending::Close) => self.a.atoms.push(Atom::Close),
            Some(Ending::Suffix(s)) => self.a.prose(&s),
            Some(Ending::Nothing) | None => {}
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

/// `s` with `<`, `>` and `&` escaped for Telegram's HTML.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        escape_into(&mut out, c);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::FrontMatter;

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
}
