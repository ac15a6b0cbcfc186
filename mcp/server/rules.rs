//! The push rules, as pure decisions: no delay for mail that arrives alone, the per-sender
//! and per-session limits (and the notice that speaks for what they hold back), the cap on
//! events a minute, answers to this session's own messages, expiry, and whether an event
//! carries whole messages or a digest. No I/O and no clock of its own: the caller passes the
//! time in, so the rules are tested with paused time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local};
use t9_ipc::mailbox::Message;
use tokio::time::Instant;

/// Up to this many messages (and this many body bytes) go out whole in one event; more
/// become a digest that names them and asks the model to call `t9_ipc_unread`.
const BUNDLE_MAX: usize = 5;
const BUNDLE_MAX_BYTES: usize = 16 * 1024;
/// The span of every limit.
const MINUTE: Duration = Duration::from_secs(60);
/// With limits on: the messages of all senders together pushed or named a minute, as a
/// multiple of the per-sender limit (the sender's name is self-declared; the total is not).
const SESSION_RATE_FACTOR: u32 = 3;
/// With limits on: events a minute, of every kind (the last one is kept for a notice).
pub const EVENTS_PER_MINUTE: usize = 10;
/// Ids of this session's own messages remembered, for the answers to them.
const ASKED_MAX: usize = 10_000;

/// What the rules remember: what went out in the last minute, and this session's own
/// messages whose answers go out at once.
pub struct Gate {
    /// A notice of held mail waits this long after the first held message, to name what the
    /// flood brought meanwhile.
    quiet: Duration,
    /// Messages of one sender pushed or named a minute, at most; `None`: no limit at all.
    rate: Option<u32>,
    /// When each sender's recent messages were pushed or named (the last minute).
    by_sender: HashMap<String, VecDeque<Instant>>,
    /// The same for all senders together.
    total: VecDeque<Instant>,
    /// When the events of the last minute went out (answers alone not counted).
    events: VecDeque<Instant>,
    /// When the last notice of held mail went out.
    noticed: Option<Instant>,
    /// When mail was first held with no notice for it yet.
    held_since: Option<Instant>,
    /// This session's own messages not answered yet (by id), oldest first.
    asked: HashSet<String>,
    asked_order: VecDeque<String>,
}

/// What to do with the pending mail now.
#[derive(Debug)]
pub enum Plan {
    /// No event now. Look again at `retry_at` (a notice is due, or a limit frees); `None`
    /// keeps whatever retry time was set before.
    Hold { retry_at: Option<Instant> },
    /// Send one event.
    Send(Batch),
}

/// The messages of one event.
#[derive(Debug)]
pub struct Batch {
    /// Sent with their bodies (none in a digest).
    pub whole: Vec<Arc<Message>>,
    /// Only named: what the limits hold back, or every message of a digest. Named mail
    /// waits for `t9_ipc_unread` and is not pushed again.
    pub named: Vec<Arc<Message>>,
    /// Too much for one event: a list of the waiting messages without bodies.
    pub digest: bool,
    /// The event speaks for mail the limits hold back (the one notice of the minute).
    pub notice: bool,
}

/// Whether `msgs` fit in one event whole.
fn fits(msgs: &[Arc<Message>]) -> bool {
    msgs.len() <= BUNDLE_MAX && msgs.iter().map(|m| m.body.len()).sum::<usize>() <= BUNDLE_MAX_BYTES
}

/// Drops the times a minute old or older.
fn prune(times: &mut VecDeque<Instant>, now: Instant) {
    while times.front().is_some_and(|t| now >= *t + MINUTE) {
        times.pop_front();
    }
}

impl Gate {
    pub fn new(quiet: Duration, rate: Option<u32>) -> Gate {
        Gate {
            quiet,
            rate,
            by_sender: HashMap::new(),
            total: VecDeque::new(),
            events: VecDeque::new(),
            noticed: None,
            held_since: None,
            asked: HashSet::new(),
            asked_order: VecDeque::new(),
        }
    }

    /// This session sent `id`: the first answer to it (`reply_to: id`) goes out at once,
    /// outside every limit. Bounded by what this session sends, so no flood can use it.
    pub fn asked(&mut self, id: String) {
        if self.asked.insert(id.clone()) {
            self.asked_order.push_back(id);
        }
        while self.asked_order.len() > ASKED_MAX {
            if let Some(old) = self.asked_order.pop_front() {
                self.asked.remove(&old);
            }
        }
    }

    /// When only answers to this session's own messages can go out until a limit frees:
    /// no event is left this minute but the one kept for a notice, and the notice of the
    /// minute was given (or no event is left at all). Until then the caller need only look
    /// at newly arrived mail for answers, not at everything that waits; `None` when other
    /// mail may go now.
    pub fn closed_until(&mut self, now: Instant) -> Option<Instant> {
        let rate = self.rate?;
        self.prune(now);
        let session_full = self.total.len() >= (rate * SESSION_RATE_FACTOR) as usize;
        let closed = self.events_left() == 0
            || (!self.may_notice(now) && (self.events_left() <= 1 || session_full));
        closed.then(|| self.frees_at(now)).flatten()
    }

    pub fn is_answer(&self, msg: &Message) -> bool {
        msg.front
            .reply_to
            .as_ref()
            .is_some_and(|r| self.asked.contains(r))
    }

    /// Decides about `pending` (unread, not yet pushed nor named, oldest first) at `now`;
    /// `wall` is the same moment on the clock that `expires` is written in.
    pub fn plan(
        &mut self,
        mut pending: Vec<Arc<Message>>,
        now: Instant,
        wall: DateTime<Local>,
    ) -> Plan {
        pending.retain(|m| !m.front.is_expired(wall));
        if pending.is_empty() {
            self.held_since = None;
            return Plan::Hold { retry_at: None };
        }
        self.prune(now);
        let (mut whole, rest): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|m| self.is_answer(m));
        let (ready, mut held) = self.admit(rest);
        if self.events_left() > 1 {
            whole.extend(ready);
        } else {
            // The last event of the minute is kept for the notice.
            held.extend(ready);
            held.sort_by(|a, b| a.id.cmp(&b.id));
        }
        let notice = !held.is_empty() && self.may_notice(now);
        if held.is_empty() {
            self.held_since = None;
        }
        if whole.is_empty() {
            if !notice {
                return Plan::Hold {
                    retry_at: self.frees_at(now),
                };
            }
            // Only held mail: one notice, once the quiet window has gathered the flood.
            let since = *self.held_since.get_or_insert(now);
            if now < since + self.quiet {
                return Plan::Hold {
                    retry_at: Some(since + self.quiet),
                };
            }
        }
        let named = if notice { held } else { Vec::new() };
        Plan::Send(if fits(&whole) {
            Batch {
                whole,
                named,
                digest: false,
                notice,
            }
        } else {
            Batch {
                whole: Vec::new(),
                named: whole.into_iter().chain(named).collect(),
                digest: true,
                notice,
            }
        })
    }

    /// Records that `batch` went out at `now` (the time [`Gate::plan`] was given).
    pub fn sent(&mut self, batch: &Batch, now: Instant) {
        let mut counted = false;
        for msg in batch.whole.iter().chain(&batch.named) {
            if let Some(r) = &msg.front.reply_to
                && self.asked.remove(r)
            {
                continue; // an answer: outside the limits, once
            }
            counted = true;
            if self.rate.is_some() {
                let times = self.by_sender.entry(msg.front.from.clone()).or_default();
                times.push_back(now);
                self.total.push_back(now);
            }
        }
        if counted && self.rate.is_some() {
            self.events.push_back(now);
        }
        if batch.notice {
            self.noticed = Some(now);
            self.held_since = None;
        }
    }

    /// The catch-up event at start went out: the mail that waited for this name does not
    /// count against the senders' minute (the event itself does).
    pub fn caught_up(&mut self) {
        self.by_sender.clear();
        self.total.clear();
    }

    fn prune(&mut self, now: Instant) {
        for times in self.by_sender.values_mut() {
            prune(times, now);
        }
        self.by_sender.retain(|_, t| !t.is_empty());
        prune(&mut self.total, now);
        prune(&mut self.events, now);
    }

    /// Events still allowed this minute.
    fn events_left(&self) -> usize {
        match self.rate {
            Some(_) => EVENTS_PER_MINUTE.saturating_sub(self.events.len()),
            None => usize::MAX,
        }
    }

    /// Whether a notice may go now: one a minute, within the events cap.
    fn may_notice(&self, now: Instant) -> bool {
        self.events_left() > 0 && self.noticed.is_none_or(|t| now >= t + MINUTE)
    }

    /// When a limit next frees: the oldest time a minute window still holds, plus a minute.
    fn frees_at(&self, now: Instant) -> Option<Instant> {
        let fronts = self
            .by_sender
            .values()
            .filter_map(|t| t.front())
            .chain(self.total.front())
            .chain(self.events.front())
            .chain(self.noticed.as_ref());
        fronts.map(|t| *t + MINUTE).filter(|at| *at > now).min()
    }

    /// Splits pending mail into what the per-sender and per-session limits let go now and
    /// what they hold back.
    fn admit(&self, pending: Vec<Arc<Message>>) -> (Vec<Arc<Message>>, Vec<Arc<Message>>) {
        let Some(rate) = self.rate else {
            return (pending, Vec::new());
        };
        let (rate, session) = (rate as usize, (rate * SESSION_RATE_FACTOR) as usize);
        let mut total = self.total.len();
        let mut taken: HashMap<&str, usize> = HashMap::new();
        let (mut ready, mut held) = (Vec::new(), Vec::new());
        for msg in &pending {
            let from = msg.front.from.as_str();
            let used = self.by_sender.get(from).map_or(0, VecDeque::len)
                + taken.get(from).copied().unwrap_or(0);
            if used < rate && total < session {
                *taken.entry(from).or_default() += 1;
                total += 1;
                ready.push(msg.clone());
            } else {
                held.push(msg.clone());
            }
        }
        (ready, held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use t9_ipc::message::{FrontMatter, TIME_FORMAT};

    const QUIET: Duration = Duration::from_millis(100);

    fn msg(id: &str, from: &str, body: &str, expires: Option<DateTime<Local>>) -> Arc<Message> {
        Arc::new(Message {
            id: id.to_owned(),
            front: FrontMatter {
                from: from.to_owned(),
                to: "beta".to_owned(),
                subject: id.to_owned(),
                expires: expires.map(|e| e.format(TIME_FORMAT).to_string()),
                ..FrontMatter::default()
            },
            body: body.to_owned(),
        })
    }

    fn from(sender: &str, ids: &[&str]) -> Vec<Arc<Message>> {
        ids.iter().map(|id| msg(id, sender, "b", None)).collect()
    }

    fn answer(id: &str, to: &str) -> Arc<Message> {
        let mut m = (*msg(id, "alpha", "b", None)).clone();
        m.front.reply_to = Some(to.to_owned());
        Arc::new(m)
    }

    fn ids(msgs: &[Arc<Message>]) -> Vec<&str> {
        msgs.iter().map(|m| m.id.as_str()).collect()
    }

    /// The test's wall clock: a fixed start plus the paused tokio time that passed.
    struct Clock {
        start: Instant,
        wall: DateTime<Local>,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                start: Instant::now(),
                wall: Local::now(),
            }
        }
        fn wall(&self) -> DateTime<Local> {
            self.wall + TimeDelta::from_std(Instant::now() - self.start).unwrap()
        }
        /// Plans and, when there is an event, records it as sent.
        fn push(&self, gate: &mut Gate, pending: Vec<Arc<Message>>) -> Plan {
            let now = Instant::now();
            let plan = gate.plan(pending, now, self.wall());
            if let Plan::Send(batch) = &plan {
                gate.sent(batch, now);
            }
            plan
        }
    }

    #[track_caller]
    fn sent(plan: Plan) -> Batch {
        match plan {
            Plan::Send(batch) => batch,
            Plan::Hold { .. } => panic!("expected an event, got {plan:?}"),
        }
    }

    #[track_caller]
    fn held(plan: Plan) -> Option<Instant> {
        match plan {
            Plan::Hold { retry_at } => retry_at,
            Plan::Send(_) => panic!("expected no event, got {plan:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_alone_goes_at_once_even_right_after_an_event() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, Some(20));
        assert_eq!(
            ids(&sent(clock.push(&mut gate, from("a", &["1"]))).whole),
            ["1"]
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            ids(&sent(clock.push(&mut gate, from("b", &["2"]))).whole),
            ["2"]
        );
        // What waits when an event is written goes in it.
        let batch = sent(clock.push(&mut gate, from("c", &["3", "4"])));
        assert_eq!(ids(&batch.whole), ["3", "4"]);
        assert!(batch.named.is_empty() && !batch.digest && !batch.notice);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_pending_is_no_event_and_keeps_the_retry_time() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, Some(20));
        assert_eq!(held(clock.push(&mut gate, Vec::new())), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_past_its_limit_gets_one_notice_then_nothing_that_minute() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, Some(2));
        let t0 = Instant::now();
        for id in ["1", "2"] {
            assert_eq!(
                ids(&sent(clock.push(&mut gate, from("a", &[id]))).whole),
                [id]
            );
        }
        // The third waits for the quiet window, so that the notice names what came meanwhile.
        assert_eq!(
            held(clock.push(&mut gate, from("a", &["3"]))),
            Some(t0 + QUIET)
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(
            held(clock.push(&mut gate, from("a", &["3", "4"]))),
            Some(t0 + QUIET)
        );
        tokio::time::advance(Duration::from_millis(40)).await;
        let batch = sent(clock.push(&mut gate, from("a", &["3", "4"])));
        assert!(
            batch.notice && batch.whole.is_empty() && !batch.digest,
            "{batch:?}"
        );
        assert_eq!(ids(&batch.named), ["3", "4"]);
        // Further excess that minute: no event.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(held(clock.push(&mut gate, from("a", &["5"]))).is_some());
        // Another sender still goes at once.
        let mut both = from("a", &["5"]);
        both.extend(from("b", &["6"]));
        let batch = sent(clock.push(&mut gate, both));
        assert_eq!((ids(&batch.whole), batch.named.len()), (vec!["6"], 0));
        // When the minute frees, a's mail goes again.
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(
            ids(&sent(clock.push(&mut gate, from("a", &["5"]))).whole),
            ["5"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn mail_held_beside_mail_that_goes_is_named_in_the_same_event() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, Some(2));
        let batch = sent(clock.push(&mut gate, from("a", &["1", "2", "3"])));
        assert_eq!(
            (ids(&batch.whole), ids(&batch.named)),
            (vec!["1", "2"], vec!["3"])
        );
        assert!(batch.notice);
    }

    #[tokio::test(start_paused = true)]
    async fn while_closed_only_answers_go_and_the_gate_opens_when_a_limit_frees() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, Some(20));
        gate.asked("q".to_owned());
        let mut closed_at = None;
        // A flood with a new `from` on every file: whenever the gate says closed, the plan
        // for more of it must hold (so a push may skip looking at what waits).
        for n in 0..3000 {
            let now = Instant::now();
            let closed = gate.closed_until(now);
            let plan = clock.push(&mut gate, from(&format!("s{n}"), &[&n.to_string()]));
            if let Some(until) = closed {
                assert!(until > now);
                assert!(matches!(plan, Plan::Hold { .. }), "closed, yet {plan:?}");
                closed_at.get_or_insert(now);
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let closed_at = closed_at.expect("a flood closes the gate");
        assert!(gate.closed_until(Instant::now()).is_some(), "still closed");
        // An answer still goes.
        let batch = sent(clock.push(&mut gate, vec![answer("a1", "q")]));
        assert_eq!(ids(&batch.whole), ["a1"]);
        // Each time it names, a window frees; the gate opens once the flood's minute passed.
        let mut looks = 0;
        while let Some(until) = gate.closed_until(Instant::now()) {
            assert!(until > Instant::now());
            tokio::time::advance(until - Instant::now()).await;
            looks += 1;
            assert!(looks < 50, "never opens");
        }
        assert!(Instant::now() <= closed_at + 2 * MINUTE);
    }

    #[tokio::test(start_paused = true)]
    async fn many_senders_cannot_pass_the_session_limits() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, Some(20));
        let mut events = 0;
        let mut named = 0;
        // A flood with a new `from` on every file, one file at a time, for a minute.
        for n in 0..6000 {
            let plan = clock.push(&mut gate, from(&format!("s{n}"), &[&n.to_string()]));
            if let Plan::Send(batch) = plan {
                events += 1;
                named += batch.named.len();
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!(events <= EVENTS_PER_MINUTE, "{events} events in a minute");
        assert_eq!(events, EVENTS_PER_MINUTE);
        assert!(named >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_to_this_sessions_messages_go_at_once_outside_the_limits_once() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, Some(1));
        for n in 0..100 {
            let q = format!("q{n}");
            gate.asked(q.clone());
            let a = answer(&format!("a{n}"), &q);
            assert_eq!(
                sent(clock.push(&mut gate, vec![a])).whole.len(),
                1,
                "answer {n}"
            );
        }
        // A second answer to the same message is ordinary mail: the limit counts it.
        let again = answer("x1", "q0");
        assert_eq!(sent(clock.push(&mut gate, vec![again])).whole.len(), 1);
        assert!(held(clock.push(&mut gate, vec![answer("x2", "q0")])).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_rate_limit_nothing_is_ever_held() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, None);
        for n in 0..50 {
            let id = n.to_string();
            assert_eq!(
                ids(&sent(clock.push(&mut gate, from("a", &[&id]))).whole),
                [id.as_str()]
            );
            tokio::time::advance(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn mail_that_expires_while_held_is_never_pushed() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, Some(1));
        let t0 = Instant::now();
        assert_eq!(
            ids(&sent(clock.push(&mut gate, from("a", &["1"]))).whole),
            ["1"]
        );
        // The minute's notice, after the quiet window.
        assert!(held(clock.push(&mut gate, from("a", &["n"]))).is_some());
        tokio::time::advance(QUIET).await;
        assert!(sent(clock.push(&mut gate, from("a", &["n"]))).notice);
        let stale = msg("2", "a", "b", Some(clock.wall() + TimeDelta::seconds(30)));
        assert_eq!(
            held(clock.push(&mut gate, vec![stale.clone()])),
            Some(t0 + MINUTE)
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            held(clock.push(&mut gate, vec![stale.clone()])),
            Some(t0 + MINUTE)
        );
        // When the minute frees, the message has expired: no event, no retry.
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(held(clock.push(&mut gate, vec![stale.clone()])), None);
        // Expired mail is left out of an event that goes for other mail.
        let fresh = msg("3", "b", "b", None);
        let batch = sent(clock.push(&mut gate, vec![stale, fresh]));
        assert_eq!(ids(&batch.whole), ["3"]);
        assert!(batch.named.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_or_too_long_become_a_digest_that_pushes_no_body() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, Some(20));
        let five = from("a", &["1", "2", "3", "4", "5"]);
        assert_eq!(sent(clock.push(&mut gate, five)).whole.len(), 5);
        let six = from("b", &["6", "7", "8", "9", "10", "11"]);
        let batch = sent(clock.push(&mut gate, six));
        assert!(batch.digest && batch.whole.is_empty(), "{batch:?}");
        assert_eq!(batch.named.len(), 6);
        let long = vec![
            msg("12", "c", &"x".repeat(BUNDLE_MAX_BYTES / 2), None),
            msg("13", "c", &"x".repeat(BUNDLE_MAX_BYTES / 2 + 1), None),
        ];
        assert!(sent(clock.push(&mut gate, long)).digest);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_at_catch_up_is_one_digest_that_holds_nothing_back_afterwards() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, Some(20));
        let many: Vec<String> = (0..500).map(|n| format!("{n:04}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let batch = sent(clock.push(&mut gate, from("a", &many)));
        assert!(batch.digest && batch.named.len() == 500, "{batch:?}");
        gate.caught_up();
        assert_eq!(
            ids(&sent(clock.push(&mut gate, from("a", &["x"]))).whole),
            ["x"]
        );
    }
}
