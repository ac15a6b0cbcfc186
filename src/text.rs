//! Small pieces of text every user-facing message shares.

/// `1 message`, `2 messages`: a count and an English noun, plural when the count is not one.
pub fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(plural(0, "message"), "0 messages");
        assert_eq!(plural(1, "message"), "1 message");
        assert_eq!(plural(2, "live session"), "2 live sessions");
    }
}
