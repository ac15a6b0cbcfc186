//! The message parser on any bytes: as the mailbox reads a file (UTF-8 first, else no
//! message), it must never panic; and a message it reads, written again, reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use t9_ipc::message;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok((front, body)) = message::parse(text) else {
        return;
    };
    // What a reader got, the writer writes back; reading that gives the same message: the
    // subject on one line, as the writer puts it, and no keys the writer does not know (it
    // writes none, and no value may add one).
    let again = message::render(&front, &body);
    let (front2, body2) = message::parse(&again)
        .unwrap_or_else(|e| panic!("a rendered message does not parse: {e}\n{again:?}"));
    let mut expected = front.clone();
    expected.subject = message::one_line(&front.subject);
    expected.extra.clear();
    assert_eq!(front2, expected, "{again:?}");
    assert_eq!(body2, body, "{again:?}");
});
