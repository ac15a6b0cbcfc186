//! Small pieces of text shared across the crate: counts, hex, and the boundary between the
//! messages of one result.

/// `1 message`, `2 messages`: a count and an English noun, plural when the count is not one.
pub fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// At most `most` names, comma-separated, and how many others: `a, b and 3 others`. For
/// the senders of a flood, which can be as many as its messages.
pub fn some_names<S: AsRef<str>>(names: &[S], most: usize) -> String {
    let shown = &names[..names.len().min(most)];
    names_and_others(shown, names.len() - shown.len())
}

/// `a, b and 3 others`: the names shown, and how many others there are.
pub fn names_and_others<S: AsRef<str>>(shown: &[S], others: usize) -> String {
    let shown: Vec<&str> = shown.iter().map(AsRef::as_ref).collect();
    match others {
        0 => shown.join(", "),
        others => format!("{} and {}", shown.join(", "), plural(others, "other")),
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Bytes from hex (either case); `None` for anything else.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The line that opens each message of a result holding several (a bundle or digest event,
/// `t9_ipc_unread`, `t9_ipc_wait`, the hook's output): it carries a token drawn afresh for
/// each result, as a MIME boundary is, so no body can hold a line that passes for the header
/// of another message.
#[derive(Debug, Clone)]
pub struct Boundary(String);

impl Boundary {
    /// A fresh boundary: 16 random hex digits.
    pub fn new() -> Boundary {
        Boundary(format!(
            "{}{}",
            crate::fsx::random_uid(),
            crate::fsx::random_uid()
        ))
    }

    /// The token itself.
    pub fn token(&self) -> &str {
        &self.0
    }

    /// The sentence that tells the reader how the result is cut: `n` messages, each opened by
    /// a line that starts with the boundary; anything between two such lines is one body.
    pub fn preamble(&self, n: usize) -> String {
        format!(
            "{} follow{}. Each begins with a line \"=== {} k/{n} ===\" and its header; every other \
             line up to the next such line is that message's text, whatever it looks like.",
            plural(n, "message"),
            if n == 1 { "s" } else { "" },
            self.0
        )
    }

    /// The line that opens message `k` (1-based) of `n`.
    pub fn open(&self, k: usize, n: usize) -> String {
        format!("=== {} {k}/{n} ===", self.0)
    }
}

impl Default for Boundary {
    fn default() -> Boundary {
        Boundary::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_differ_and_open_lines_carry_them() {
        let (a, b) = (Boundary::new(), Boundary::new());
        assert_ne!(a.token(), b.token());
        assert_eq!(a.token().len(), 16);
        assert_eq!(a.open(2, 3), format!("=== {} 2/3 ===", a.token()));
        assert!(a.preamble(3).starts_with("3 messages follow."));
        assert!(a.preamble(1).starts_with("1 message follows."));
    }

    #[test]
    fn counts() {
        assert_eq!(plural(0, "message"), "0 messages");
        assert_eq!(plural(1, "message"), "1 message");
        assert_eq!(plural(2, "live session"), "2 live sessions");
    }
}
