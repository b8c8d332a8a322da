//! Streaming text out of tokens, with any tokenizer: a token may end inside a UTF-8 character
//! (GPT-2's byte-level BPE spreads an emoji over several tokens), so new text waits until the
//! tokens so far decode without a trailing U+FFFD.

use brainfloat_data::Tokenizer;

/// Tokens in, whole characters out: each push decodes every token so far and hands out the
/// text past what it handed out before (a decoder may join tokens differently than piece by
/// piece, so the whole sequence is decoded, not the new token alone).
pub struct TextStream<'a> {
    tokenizer: &'a dyn Tokenizer,
    tokens: Vec<u32>,
    /// Bytes of the decoded text already handed out.
    emitted: usize,
}

impl<'a> TextStream<'a> {
    /// A stream holding nothing.
    pub fn new(tokenizer: &'a dyn Tokenizer) -> Self {
        Self {
            tokenizer,
            tokens: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds `token` and returns the text now complete; a character still unfinished at the end
    /// waits for the next tokens.
    pub fn push(&mut self, token: u32) -> String {
        self.tokens.push(token);
        let text = self.tokenizer.decode(&self.tokens);
        if text.ends_with(char::REPLACEMENT_CHARACTER) {
            return String::new();
        }
        self.take(text)
    }

    /// What is left at the end (an unfinished character as U+FFFD).
    pub fn finish(&mut self) -> String {
        let text = self.tokenizer.decode(&self.tokens);
        self.take(text)
    }

    fn take(&mut self, text: String) -> String {
        let new = text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = self.emitted.max(text.len());
        new
    }
}

#[cfg(test)]
mod tests {
    use brainfloat_data::Gpt2Tokenizer;

    use super::*;

    fn streamed(tokenizer: &dyn Tokenizer, tokens: &[u32]) -> Vec<String> {
        let mut stream = TextStream::new(tokenizer);
        let mut pieces: Vec<String> = tokens.iter().map(|&t| stream.push(t)).collect();
        pieces.push(stream.finish());
        pieces
    }

    #[test]
    fn characters_split_across_tokens_come_out_whole() {
        let tokenizer = Gpt2Tokenizer::new();
        let text = "a€😀b and 🦀 too";
        let tokens = tokenizer.encode(text);
        let pieces = streamed(&tokenizer, &tokens);
        assert_eq!(pieces.concat(), text);
        assert!(
            pieces
                .iter()
                .all(|p| !p.contains(char::REPLACEMENT_CHARACTER))
        );
        // 😀 is several byte tokens: nothing comes out until its last one.
        let emoji = tokenizer.encode("😀");
        assert!(emoji.len() > 1, "{emoji:?}");
        let pieces = streamed(&tokenizer, &emoji);
        assert!(pieces[..emoji.len() - 1].iter().all(String::is_empty));
        assert_eq!(pieces[emoji.len() - 1], "😀");
    }

    #[test]
    fn an_unfinished_character_ends_as_a_replacement_character() {
        let tokenizer = Gpt2Tokenizer::new();
        let emoji = tokenizer.encode("😀");
        let pieces = streamed(&tokenizer, &emoji[..1]);
        assert_eq!(pieces, ["", "\u{FFFD}"]);
    }
}
