//! Search over one session's mail (sent and received, in `inbox/` and `archive/`), newest
//! first, with receipts for what it sent: whether the recipient had it pushed, read it, or
//! answered it (from the recipients' `state/<name>.log` and their replies). Reads only.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::Arc;

use chrono::{DateTime, Local};

use crate::error::{Error, Result};
use crate::mailbox::{Filed, Mailbox, MarkTimes, Message, ReadState};
use crate::message::{self, check_name};

/// Results returned when no limit is given, and at most.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;

/// What to look for. Every given part must match.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Words that must all appear (case-insensitive) in the subject or the body.
    pub words: Vec<String>,
    /// The other side: messages from or to this name.
    pub with: Option<String>,
    /// A msg_id: the messages linked to it through `reply_to`, both ways.
    pub thread: Option<String>,
    pub limit: usize,
}

/// What happened to a sent message at its recipient.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Receipt {
    pub to: String,
    pub pushed: bool,
    pub read: bool,
    /// When it was pushed and read (`created`'s format), where `state/<name>.times` says;
    /// marks written before that file was kept have no time.
    pub pushed_at: Option<String>,
    pub read_at: Option<String>,
    /// The first reply from the recipient: its id and `created` time.
    pub answered: Option<(String, String)>,
}

impl Receipt {
    /// `answered <time> (<id>)`, `read <time>`, `pushed <time>, not read`, or `not read
    /// yet` (a time only where one was recorded).
    pub fn describe(&self) -> String {
        let at = |t: &Option<String>| t.as_ref().map(|t| format!(" {t}")).unwrap_or_default();
        match (&self.answered, self.read, self.pushed) {
            (Some((id, at)), _, _) => format!("answered {at} ({id})"),
            (None, true, _) => format!("read{}", at(&self.read_at)),
            (None, false, true) => format!("pushed{}, not read", at(&self.pushed_at)),
            (None, false, false) => "not read yet".to_owned(),
        }
    }
}

/// One message found.
#[derive(Debug, Clone)]
pub struct Hit {
    pub message: Arc<Message>,
    /// True when it was found in `archive/`.
    pub archived: bool,
    /// For messages this session sent: one receipt per recipient (for a broadcast, every
    /// name that has a read state and pushed, read or answered it).
    pub receipts: Vec<Receipt>,
}

/// The search result: the newest `limit` hits, and how many more matched.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub hits: Vec<Hit>,
    pub more: usize,
}

/// Searches `name`'s mail in `mailbox`.
pub fn search(mailbox: &Mailbox, name: &str, query: &Query, now: DateTime<Local>) -> Result<Found> {
    let limit = match query.limit {
        0 => DEFAULT_LIMIT,
        n if n <= MAX_LIMIT => n,
        n => {
            return Err(Error::Refused(format!(
                "limit {n} is too large; at most {MAX_LIMIT}"
            )));
        }
    };
    let words: Vec<String> = query
        .words
        .iter()
        .flat_map(|w| w.split_whitespace())
        .map(str::to_lowercase)
        .collect();
    let mine = mail_of(mailbox, name)?;
    // Threads: each message's parent through reply_to, among this session's mail.
    let thread: Option<HashSet<String>> = query.thread.as_deref().map(|id| {
        let parent: HashMap<&str, &str> = mine
            .iter()
            .filter_map(|f| Some((f.message.id.as_str(), f.message.front.reply_to.as_deref()?)))
            .collect();
        let root_of = |id: &str| root_of(&parent, id);
        let root = root_of(id.trim());
        let mut ids: HashSet<String> = mine
            .iter()
            .filter(|f| root_of(&f.message.id) == root)
            .map(|f| f.message.id.clone())
            .collect();
        ids.insert(root);
        ids
    });
    let matches = |f: &Filed| -> bool {
        let m = &f.message;
        if let Some(with) = query.with.as_deref()
            && m.front.from != with
            && m.front.to != with
        {
            return false;
        }
        if let Some(t) = &thread
            && !t.contains(&m.id)
        {
            return false;
        }
        words.iter().all(|w| f.text.contains(w.as_str()))
    };
    let mut found: Vec<&Filed> = mine.iter().filter(|f| matches(f)).collect();
    // Newest first: ids start with their time stamp.
    found.sort_by(|a, b| b.message.id.cmp(&a.message.id));
    let more = found.len().saturating_sub(limit);
    found.truncate(limit);
    let mut states = States::new(mailbox, now);
    let hits = found
        .into_iter()
        .map(|f| {
            let receipts = if f.message.front.from == name {
                receipts(&f.message, &mine, &mut states)
            } else {
                Vec::new()
            };
            Hit {
                message: f.message.clone(),
                archived: f.archived,
                receipts,
            }
        })
        .collect();
    Ok(Found { hits, more })
}

/// The first message of `id`'s thread: `reply_to` followed up as far as it leads (a loop
/// stops where it closes).
fn root_of(parent: &HashMap<&str, &str>, id: &str) -> String {
    let mut id = id;
    let mut seen = HashSet::new();
    while let Some(p) = parent.get(id) {
        if !seen.insert(id) {
            break;
        }
        id = p;
    }
    id.to_owned()
}

/// Every good message in `inbox/` and `archive/` that `name` sent or received, with whether
/// it is archived ([`Mailbox::mail_of`]: files whose name shows they are not `name`'s mail
/// are not read).
fn mail_of(mailbox: &Mailbox, name: &str) -> Result<Vec<Filed>> {
    let mut mail = mailbox.mail_of(name)?;
    mail.retain(|f| f.message.front.from == name || f.message.front.is_for(name));
    Ok(mail)
}

fn receipts(sent: &Message, mine: &[Filed], states: &mut States) -> Vec<Receipt> {
    let answer_from = |who: &str| {
        mine.iter()
            .map(|f| &f.message)
            .filter(|m| m.front.from == who && m.front.reply_to.as_deref() == Some(&sent.id))
            .min_by(|a, b| a.id.cmp(&b.id))
            .map(|m| (m.id.clone(), m.front.created.clone()))
    };
    let receipt = |to: &str, states: &mut States| {
        let (pushed, read) = states.of(to).map_or((false, false), |s| {
            (s.was_pushed(&sent.id), s.was_read(&sent.id))
        });
        let times = states.times(to, &sent.id);
        let shown =
            |t: Option<DateTime<Local>>| t.map(|t| t.format(message::TIME_FORMAT).to_string());
        Receipt {
            to: to.to_owned(),
            pushed,
            read,
            pushed_at: shown(times.pushed.filter(|_| pushed)),
            read_at: shown(times.read.filter(|_| read)),
            answered: answer_from(to),
        }
    };
    if sent.front.is_broadcast() {
        let names = states.names();
        names
            .iter()
            .filter(|n| **n != sent.front.from)
            .map(|n| receipt(n, states))
            .filter(|r| r.pushed || r.read || r.answered.is_some())
            .collect()
    } else {
        vec![receipt(&sent.front.to, states)]
    }
}

/// Read states loaded on demand, through the mailbox's one reader of state logs.
struct States<'a> {
    mailbox: &'a Mailbox,
    now: DateTime<Local>,
    loaded: HashMap<String, Option<ReadState>>,
    times: HashMap<String, HashMap<String, MarkTimes>>,
}

impl<'a> States<'a> {
    fn new(mailbox: &'a Mailbox, now: DateTime<Local>) -> States<'a> {
        States {
            mailbox,
            now,
            loaded: HashMap::new(),
            times: HashMap::new(),
        }
    }

    /// When `name` had `id` pushed and read, where its times file says (read once).
    fn times(&mut self, name: &str, id: &str) -> MarkTimes {
        let mailbox = self.mailbox;
        self.times
            .entry(name.to_owned())
            .or_insert_with(|| mailbox.mark_times(name).unwrap_or_default())
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// The names that have a state log.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.mailbox.root().join("state"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_suffix(".log").map(str::to_owned))
                    .filter(|n| check_name(n).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// `name`'s read state, read without writing anything; none for a name that is no name.
    fn of(&mut self, name: &str) -> Option<&ReadState> {
        if !self.loaded.contains_key(name) {
            let state = check_name(name)
                .ok()
                .and_then(|()| self.mailbox.peek_state(name, self.now).ok());
            self.loaded.insert(name.to_owned(), state);
        }
        self.loaded.get(name).and_then(Option::as_ref)
    }
}
