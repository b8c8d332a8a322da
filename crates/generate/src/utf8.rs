//! Streaming text out of token bytes: a GPT-2 token may end inside a UTF-8 character (an emoji
//! spans several tokens), so bytes wait until they form whole characters.

/// Bytes in, whole UTF-8 characters out.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// A stream holding nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and returns the characters now complete. A byte sequence that can never
    /// be UTF-8 comes out as U+FFFD; an unfinished character at the end waits for more bytes.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.pending.clear();
                    return text;
                }
                Err(err) => {
                    let valid = err.valid_up_to();
                    // The first `valid_up_to` bytes were just checked to be UTF-8.
                    text.push_str(std::str::from_utf8(&self.pending[..valid]).expect("checked"));
                    match err.error_len() {
                        // Invalid bytes inside: replaced, and the rest read on.
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // An unfinished character at the end: kept for the next bytes.
                        None => {
                            self.pending.drain(..valid);
                            return text;
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end (an unfinished character as U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_pushes_come_out_whole() {
        let text = "a€😀b";
        let bytes = text.as_bytes();
        for cut_a in 0..=bytes.len() {
            for cut_b in cut_a..=bytes.len() {
                let mut stream = Utf8Stream::new();
                let mut out = stream.push(&bytes[..cut_a]);
                out += &stream.push(&bytes[cut_a..cut_b]);
                out += &stream.push(&bytes[cut_b..]);
                out += &stream.finish();
                assert_eq!(out, text, "cuts at {cut_a}, {cut_b}");
            }
        }
    }

    #[test]
    fn nothing_is_emitted_before_a_character_completes() {
        let mut stream = Utf8Stream::new();
        let euro = "€".as_bytes();
        assert_eq!(stream.push(&euro[..1]), "");
        assert_eq!(stream.push(&euro[1..2]), "");
        assert_eq!(stream.push(&euro[2..]), "€");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut stream = Utf8Stream::new();
        assert_eq!(stream.push(b"a\xFFb"), "a\u{FFFD}b");
        assert_eq!(stream.push(b"\xE2\x82"), "");
        assert_eq!(stream.finish(), "\u{FFFD}");
    }
}
