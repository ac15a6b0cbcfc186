//! The push rules, as pure decisions: the quiet window after an event, the per-sender rate
//! limit, expiry, and whether an event carries whole messages or a digest. No I/O and no
//! clock of its own: the caller passes the time in, so the rules are tested with paused time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local};
use t9_ipc::mailbox::Message;
use tokio::time::Instant;

/// Up to this many messages (and this many body bytes) go out whole in one event; more
/// become a digest that names them and asks the model to call `t9_ipc_unread`.
const BUNDLE_MAX: usize = 5;
const BUNDLE_MAX_BYTES: usize = 16 * 1024;
/// The span of the per-sender rate limit.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// What the rules remember: when the last event went out, and when each sender's recent
/// messages were pushed.
pub struct Gate {
    /// After an event, new mail waits this long and goes out as one event.
    quiet: Duration,
    /// Messages of one sender pushed per minute, at most.
    rate: Option<u32>,
    last_push: Option<Instant>,
    /// When each sender's recent messages were pushed (the last minute).
    recent: HashMap<String, VecDeque<Instant>>,
}

/// What to do with the pending mail now.
#[derive(Debug)]
pub enum Plan {
    /// No event now. Look again at `retry_at` (the quiet window ends, or a sender's minute
    /// frees); `None` keeps whatever retry time was set before.
    Hold { retry_at: Option<Instant> },
    /// Send one event.
    Send(Batch),
}

/// The messages of one event.
#[derive(Debug)]
pub struct Batch {
    /// Sent with their bodies (none in a digest).
    pub whole: Vec<Arc<Message>>,
    /// Only named: what the rate limit holds back, or every message of a digest. Named mail
    /// waits for `t9_ipc_unread` and is not pushed again.
    pub named: Vec<Arc<Message>>,
    /// Too much for one event: a list of the waiting messages without bodies.
    pub digest: bool,
}

/// A message the rate limit holds back, with the time its sender's minute frees.
type Held = (Arc<Message>, Option<Instant>);

impl Gate {
    pub fn new(quiet: Duration, rate: Option<u32>) -> Gate {
        Gate {
            quiet,
            rate,
            last_push: None,
            recent: HashMap::new(),
        }
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
            return Plan::Hold { retry_at: None };
        }
        if let Some(last) = self.last_push
            && now < last + self.quiet
        {
            return Plan::Hold {
                retry_at: Some(last + self.quiet),
            };
        }
        let (ready, held) = self.admit(pending, now);
        if ready.is_empty() {
            // Only held mail: no event. It waits unread (reminders name it) and goes out when
            // the sender's minute frees.
            return Plan::Hold {
                retry_at: held.iter().filter_map(|(_, at)| *at).min(),
            };
        }
        let held: Vec<Arc<Message>> = held.into_iter().map(|(m, _)| m).collect();
        let bodies: usize = ready.iter().map(|m| m.body.len()).sum();
        Plan::Send(if ready.len() <= BUNDLE_MAX && bodies <= BUNDLE_MAX_BYTES {
            Batch {
                whole: ready,
                named: held,
                digest: false,
            }
        } else {
            Batch {
                whole: Vec::new(),
                named: ready.into_iter().chain(held).collect(),
                digest: true,
            }
        })
    }

    /// Records that `batch` went out at `now` (the time [`Gate::plan`] was given).
    pub fn sent(&mut self, batch: &Batch, now: Instant) {
        if let Some(rate) = self.rate {
            for msg in &batch.whole {
                let times = self.recent.entry(msg.front.from.clone()).or_default();
                times.push_back(now);
                while times.len() > rate as usize {
                    times.pop_front();
                }
            }
        }
        self.last_push = Some(now);
    }

    /// Splits pending mail into what may go now and what the per-sender rate limit holds
    /// back (with the time it may go).
    fn admit(
        &mut self,
        pending: Vec<Arc<Message>>,
        now: Instant,
    ) -> (Vec<Arc<Message>>, Vec<Held>) {
        let Some(rate) = self.rate else {
            return (pending, Vec::new());
        };
        for times in self.recent.values_mut() {
            while times.front().is_some_and(|t| now >= *t + RATE_WINDOW) {
                times.pop_front();
            }
        }
        self.recent.retain(|_, t| !t.is_empty());
        let mut ready = Vec::new();
        let mut held = Vec::new();
        let mut taken: HashMap<&str, usize> = HashMap::new();
        for msg in &pending {
            let from = msg.front.from.as_str();
            let recent = self.recent.get(from);
            let used = recent.map_or(0, VecDeque::len) + taken.get(from).copied().unwrap_or(0);
            if used < rate as usize {
                *taken.entry(from).or_default() += 1;
                ready.push(msg.clone());
            } else {
                let free_at = recent.and_then(|t| t.front()).map(|t| *t + RATE_WINDOW);
                held.push((msg.clone(), free_at));
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
    async fn mail_after_an_event_waits_out_the_quiet_window_then_goes_as_one() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, None);
        let t0 = Instant::now();
        assert_eq!(
            ids(&sent(clock.push(&mut gate, from("a", &["1"]))).whole),
            ["1"]
        );
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(
            held(clock.push(&mut gate, from("a", &["2"]))),
            Some(t0 + QUIET)
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(
            held(clock.push(&mut gate, from("a", &["2", "3"]))),
            Some(t0 + QUIET)
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        let batch = sent(clock.push(&mut gate, from("a", &["2", "3"])));
        assert_eq!(ids(&batch.whole), ["2", "3"]);
        assert!(batch.named.is_empty() && !batch.digest);
        // The window starts again from the new event.
        assert_eq!(
            held(clock.push(&mut gate, from("b", &["4"]))),
            Some(t0 + 2 * QUIET)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_pending_is_no_event_and_keeps_the_retry_time() {
        let clock = Clock::new();
        let mut gate = Gate::new(QUIET, Some(20));
        assert_eq!(held(clock.push(&mut gate, Vec::new())), None);
    }

    #[tokio::test(start_paused = true)]
    async fn one_sender_is_limited_per_minute_and_others_are_not() {
        let clock = Clock::new();
        let mut gate = Gate::new(Duration::ZERO, Some(2));
        let t0 = Instant::now();
        // Three at once: two go whole, the third is named in the same event.
        let batch = sent(clock.push(&mut gate, from("a", &["1", "2", "3"])));
        assert_eq!(
            (ids(&batch.whole), ids(&batch.named)),
            (vec!["1", "2"], vec!["3"])
        );
        // Within the minute: a's next waits for the minute to free, no event.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            held(clock.push(&mut gate, from("a", &["4"]))),
            Some(t0 + RATE_WINDOW)
        );
        // Another sender is not held; a's mail is named alongside.
        let mut both = from("a", &["4"]);
        both.extend(from("b", &["5"]));
        let batch = sent(clock.push(&mut gate, both));
        assert_eq!(
            (ids(&batch.whole), ids(&batch.named)),
            (vec!["5"], vec!["4"])
        );
        // A millisecond before the minute frees, a is still held; at the minute, it goes.
        tokio::time::advance(Duration::from_millis(49_999)).await;
        assert_eq!(
            held(clock.push(&mut gate, from("a", &["6"]))),
            Some(t0 + RATE_WINDOW)
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            ids(&sent(clock.push(&mut gate, from("a", &["6", "7"]))).whole),
            ["6", "7"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_rate_limit_a_sender_is_never_held() {
        let clock = Clock::new();
        let mut gate = Gate::new(Duration::ZERO, None);
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
        let mut gate = Gate::new(Duration::ZERO, Some(1));
        let t0 = Instant::now();
        assert_eq!(
            ids(&sent(clock.push(&mut gate, from("a", &["1"]))).whole),
            ["1"]
        );
        let stale = msg("2", "a", "b", Some(clock.wall() + TimeDelta::seconds(30)));
        assert_eq!(
            held(clock.push(&mut gate, vec![stale.clone()])),
            Some(t0 + RATE_WINDOW)
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            held(clock.push(&mut gate, vec![stale.clone()])),
            Some(t0 + RATE_WINDOW)
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
        let mut gate = Gate::new(Duration::ZERO, Some(20));
        let five = from("a", &["1", "2", "3", "4", "5"]);
        assert_eq!(sent(clock.push(&mut gate, five)).whole.len(), 5);
        tokio::time::advance(Duration::from_millis(1)).await;
        let six = from("b", &["6", "7", "8", "9", "10", "11"]);
        let batch = sent(clock.push(&mut gate, six));
        assert!(batch.digest && batch.whole.is_empty(), "{batch:?}");
        assert_eq!(batch.named.len(), 6);
        tokio::time::advance(Duration::from_millis(1)).await;
        let long = vec![
            msg("12", "c", &"x".repeat(BUNDLE_MAX_BYTES / 2), None),
            msg("13", "c", &"x".repeat(BUNDLE_MAX_BYTES / 2 + 1), None),
        ];
        let batch = sent(clock.push(&mut gate, long));
        assert!(batch.digest, "{batch:?}");
        // A digest pushed no body, so it does not count against the senders' minute.
        tokio::time::advance(Duration::from_millis(1)).await;
        let more: Vec<String> = (0..5).map(|n| format!("b{n}")).collect();
        let more: Vec<&str> = more.iter().map(String::as_str).collect();
        assert_eq!(sent(clock.push(&mut gate, from("b", &more))).whole.len(), 5);
    }
}
