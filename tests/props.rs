//! Properties of the message format, checked on generated input: what the tools accept
//! survives a write and a read unchanged, and no input makes the reader panic.

use chrono::{Local, TimeZone};
use proptest::prelude::*;
use t9_ipc::Error;
use t9_ipc::mailbox::Mailbox;
use t9_ipc::message::{self, FrontMatter};

/// Pieces that mean something to YAML, markdown or our own reader, mixed with any character.
fn tricky_text(max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => any::<char>().prop_map(String::from),
        2 => "[a-z ]{1,6}",
        1 => prop::sample::select(vec![
            "---", "...", "\n", "\r\n", "\r", ": ", ":", "#", "'", "\"", " ", "\t", "- ", "? ",
            "{", "}", "[", "]", "&a", "*a", "!!str ", "|", ">", "%YAML", "@", "`", "\0",
            "\u{feff}", "\u{85}", "\u{2028}", "\u{2029}", "\\", "from: x", "to: y", "\n---\n",
            "\r\n---\r\n", "null", "~", "yes", "0x1F", "1e3",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..max).prop_map(|pieces| pieces.concat())
}

/// A session name `check_name` accepts.
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{3,64}".prop_filter("check_name accepts it", |n| message::check_name(n).is_ok())
}

/// A subject `check_subject` accepts, as the tools write it (on one line, trimmed).
fn subject() -> impl Strategy<Value = String> {
    tricky_text(60).prop_filter_map("check_subject accepts it", |s| {
        message::check_subject(&s).ok()
    })
}

fn body() -> impl Strategy<Value = String> {
    tricky_text(120).prop_filter("check_body accepts it", |b| message::check_body(b).is_ok())
}

fn stem() -> impl Strategy<Value = String> {
    (
        name(),
        name(),
        subject(),
        0i64..4_102_444_800,
        "[0-9a-f]{8}",
    )
        .prop_map(|(from, to, subject, secs, uid)| {
            let now = Local.timestamp_opt(secs, 0).single().expect("a valid time");
            message::file_stem(now, &uid, &from, &to, &subject)
        })
}

/// `cases` cases (`PROPTEST_CASES` sets more for a longer run), and no regression files: a
/// failure found here becomes a named test.
fn config(cases: u32) -> ProptestConfig {
    let more = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok());
    ProptestConfig {
        cases: more.unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn what_the_tools_accept_reads_back_unchanged(
        from in name(),
        to in prop_oneof![name(), Just(message::BROADCAST.to_owned())],
        subject in subject(),
        body in body(),
        priority in prop::sample::select(vec!["normal", "high", "critical"]),
        reply_to in prop::option::of(stem()),
        thread in prop::option::of(stem()),
        info_only in any::<bool>(),
    ) {
        let front = FrontMatter {
            from,
            to,
            kind: "ipc".to_owned(),
            subject,
            priority: priority.to_owned(),
            created: "2026-04-06 15:30:00".to_owned(),
            reply_to,
            thread,
            supersedes: None,
            expires: Some("2026-04-07 00:00:00".to_owned()),
            expects_reply: info_only.then(|| "false".to_owned()),
            extra: Default::default(),
        };
        let text = message::render(&front, &body);
        let (back, back_body) = message::parse(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text:?}")))?;
        prop_assert_eq!(&back.subject, &message::one_line(&front.subject), "{:?}", text);
        prop_assert_eq!(&back, &front, "{:?}", text);
        prop_assert_eq!(&back_body, &body, "{:?}", text);
    }

    #[test]
    fn a_raw_subject_reads_back_on_one_line(subject in subject(), raw in tricky_text(20)) {
        // Line breaks the tools did not remove become spaces, and never a new key.
        let raw = format!("{subject}{raw}{subject}");
        let front = FrontMatter {
            from: "alpha".to_owned(),
            to: "beta".to_owned(),
            subject: raw.clone(),
            ..FrontMatter::default()
        };
        let text = message::render(&front, "b");
        let (back, _) = message::parse(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text:?}")))?;
        prop_assert_eq!(back.subject, message::one_line(&raw), "{:?}", text);
        prop_assert_eq!(back.to, "beta");
        prop_assert!(back.extra.is_empty(), "{:?}", back.extra);
    }

    #[test]
    fn the_parser_never_panics_on_any_text(text in any::<String>()) {
        let _ = message::parse(&text);
    }

    #[test]
    fn the_parser_never_panics_on_front_matter_lookalikes(
        head in tricky_text(40),
        yaml in tricky_text(60),
        close in prop::sample::select(vec!["---", "...", "--- ", "----", ""]),
        body in tricky_text(40),
        crlf in any::<bool>(),
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let text = format!("{head}---{nl}{yaml}{nl}{close}{nl}{body}");
        let _ = message::parse(&text);
        let _ = message::parse(&text[head.len()..]);
    }

    #[test]
    fn a_stem_is_never_refused_for_its_own_recipient(
        from in name(),
        to in prop_oneof![name(), Just(message::BROADCAST.to_owned())],
        subject in tricky_text(60),
        secs in 0i64..253_402_300_799,
        micros in 0u32..1_000_000,
        uid in "[0-9a-f]{8}",
    ) {
        let now = Local.timestamp_opt(secs, micros * 1000).single().expect("a valid time");
        let stem = message::file_stem(now, &uid, &from, &to, &subject);
        prop_assert!(message::stem_may_address(&stem, &to), "{} for {}", stem, to);
    }
}

proptest! {
    // Each case writes a file: fewer of them.
    #![proptest_config(config(64))]

    /// Any bytes in a message file: read through the mailbox (as the server reads it), the
    /// answer is a message exactly when the bytes are UTF-8 that parses, and a refusal that
    /// names the file otherwise; never a panic.
    #[test]
    fn the_mailbox_reads_any_bytes_without_panicking(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..400),
            (tricky_text(40), prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(t, b)| {
                let mut bytes = format!("---\nfrom: alpha\nto: beta\nsubject: {t}\n---\n\n").into_bytes();
                bytes.extend(b);
                bytes
            }),
        ],
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mailbox = Mailbox::open(dir.path()).expect("mailbox");
        let id = "20260406T153000000000-0a1b2c3d-alpha-beta-s";
        std::fs::write(mailbox.inbox().join(format!("{id}.md")), &bytes).expect("write");
        let expected = std::str::from_utf8(&bytes).ok().map(message::parse);
        match mailbox.find(id) {
            Ok(Some((msg, "inbox"))) => {
                let Some(Ok((front, body))) = expected else {
                    return Err(TestCaseError::fail(format!("read as a message: {bytes:?}")));
                };
                prop_assert_eq!(msg.front, front);
                prop_assert_eq!(msg.body, body);
                prop_assert_eq!(mailbox.get(id).map(|m| m.id.clone()), Some(id.to_owned()));
            }
            Err(Error::Refused(why)) => {
                prop_assert!(!matches!(expected, Some(Ok(_))), "{}: {:?}", why, bytes);
                prop_assert!(why.contains(id), "{}", why);
                prop_assert!(mailbox.get(id).is_none());
            }
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        }
    }
}
