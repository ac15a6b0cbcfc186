//! The message parser against small fixture files (tests/fixtures/*.md).

use std::path::Path;

use t9_ipc::message::{self, ParseError};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// file, from, to, type, subject, priority, reply_to, body
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
);

#[test]
fn good_fixtures_parse() {
    let table: &[Case] = &[
        (
            "original.md",
            "alpha",
            "beta",
            "ipc",
            "parser done",
            "normal",
            None,
            "done with the parser, pushing to main",
        ),
        (
            "original-colon.md",
            "alpha",
            "beta",
            "ipc",
            "fix: the parser",
            "high",
            None,
            "unquoted colon in the subject",
        ),
        (
            "original-hash.md",
            "alpha",
            "all",
            "broadcast",
            "#3 is fixed",
            "normal",
            None,
            "hash at the start",
        ),
        (
            "crlf.md",
            "alpha",
            "beta",
            "ipc",
            "windows",
            "normal",
            None,
            "line one\r\nline two",
        ),
        (
            "extra-keys.md",
            "alpha",
            "broadcast",
            "escalation",
            "quoted: \"yes\"",
            "critical",
            Some("20260406T152900000000-0a1b2c3d-beta-alpha-q"),
            "with extra keys",
        ),
        (
            "bom.md",
            "alpha",
            "beta",
            "ipc",
            "byte order mark",
            "normal",
            None,
            "written by a Windows editor",
        ),
        (
            "tabs.md",
            "alpha",
            "beta",
            "ipc",
            "tabs\tinside",
            "normal",
            None,
            "body\twith a tab",
        ),
        (
            "duplicate-same.md",
            "alpha",
            "beta",
            "",
            "said twice",
            "",
            None,
            "body",
        ),
        (
            "no-blank-line.md",
            "alpha",
            "beta",
            "",
            "no blank line",
            "",
            None,
            "body right after",
        ),
    ];
    for &(file, from, to, kind, subject, priority, reply_to, body) in table {
        let (front, got_body) =
            message::parse(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(front.from, from, "{file}");
        assert_eq!(front.to, to, "{file}");
        assert_eq!(front.kind, kind, "{file}");
        assert_eq!(front.subject, subject, "{file}");
        assert_eq!(front.priority, priority, "{file}");
        assert_eq!(front.reply_to.as_deref(), reply_to, "{file}");
        assert_eq!(got_body, body, "{file}");
    }
    let (front, _) = message::parse(&fixture("extra-keys.md")).unwrap();
    assert_eq!(front.expires.as_deref(), Some("2026-04-07 00:00:00"));
    assert!(front.is_broadcast());
}

#[test]
fn bad_fixtures_are_refused_with_a_reason() {
    let table = [
        ("no-front-matter.md", ParseError::NoFrontMatter),
        ("not-at-start.md", ParseError::NoFrontMatter),
        ("unclosed.md", ParseError::Unclosed),
        ("missing-from.md", ParseError::Missing("from")),
        ("duplicate-to.md", ParseError::Twice("to")),
    ];
    for (file, expected) in table {
        assert_eq!(
            message::parse(&fixture(file)).unwrap_err(),
            expected,
            "{file}"
        );
    }
}

#[test]
fn what_we_write_reads_back_from_every_fixture() {
    for file in [
        "original.md",
        "original-colon.md",
        "original-hash.md",
        "crlf.md",
        "extra-keys.md",
        "bom.md",
        "tabs.md",
    ] {
        let (front, body) = message::parse(&fixture(file)).unwrap();
        let again = message::render(&front, &body);
        let (front2, body2) = message::parse(&again).unwrap();
        assert_eq!(
            (front2.from, front2.to, front2.subject),
            (front.from, front.to, front.subject),
            "{file}"
        );
        assert_eq!(body2, body, "{file}");
    }
}
