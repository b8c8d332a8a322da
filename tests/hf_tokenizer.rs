//! A `tokenizer.json` made by Hugging Face's `tokenizers` library (from PyPI, trained in the
//! test: no model hub) tokenizes a text here exactly as the library does, and its shards carry
//! those ids.

use std::path::Path;

use brainfloat_data::{
    DocumentSource, HfTokenizer, Shard, ShardOptions, Tokenizer, tokenize_to_shards,
};
use brainfloat_generate::{GenerateOptions, Sampling, generate};
use brainfloat_gpt::GptConfig;
use brainfloat_tests::{python_output, script, torch_python};

/// Text with what byte-level BPE must get right: spaces, newlines, punctuation, digits,
/// non-ASCII letters, an emoji, and the separator's name (an added token: the library gives it
/// its id).
const PROBE: &str = "The state of the Union is strong.\n  Two  spaces, tabs\tand 1790–2021!\n\
                     Ünïcödé naïve café — 東京 🚀 <|endoftext|> done.";

#[test]
fn a_hugging_face_tokenizer_json_encodes_as_the_library_does() {
    let Some(python) = torch_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let training = dir.path().join("training.txt");
    let corpus =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    std::fs::write(&training, &corpus).unwrap();
    let probe = dir.path().join("probe.txt");
    std::fs::write(&probe, PROBE).unwrap();
    let script = script("hf_tokenizer.py");
    let args = [&script, &training, &dir.path().to_path_buf(), &probe];
    let stdout = python_output(&python, &args);
    let theirs: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    let ids: Vec<u32> = serde_json::from_value(theirs["ids"].clone()).unwrap();

    let ours = HfTokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(ours.encode(PROBE), ids, "the same ids as the library");
    assert_eq!(ours.decode(&ids), theirs["decoded"].as_str().unwrap());
    assert_eq!(ours.decode(&ids), PROBE, "byte-level BPE round-trips");
    assert_eq!(
        ours.vocab_size() as u64,
        theirs["vocab_size"].as_u64().unwrap()
    );
    let separator = theirs["end_of_text"].as_u64().map(|id| id as u32);
    assert_eq!(ours.document_separator(), separator);

    // Shards of two documents: the separator, then each document's ids.
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::write(docs.join("a.txt"), PROBE).unwrap();
    std::fs::write(docs.join("b.txt"), "done.").unwrap();
    let documents = DocumentSource::at(&docs, "text")
        .unwrap()
        .documents()
        .unwrap();
    let out = dir.path().join("shards");
    let options = ShardOptions {
        name: "hf".into(),
        val_every: 2,
        shard_tokens: usize::MAX,
    };
    tokenize_to_shards(&ours, documents, &out, &options, |_, _| {}).unwrap();
    let train = Shard::open(&out.join("hf_train_000.bin")).unwrap();
    let want: Vec<u32> = separator.into_iter().chain(ids).collect();
    assert_eq!(train.window(0, train.len()).unwrap(), want);

    generation_streams_the_tokenizers_text(&ours);
}

/// Generation with the tokenizer: an empty prompt starts from its separator, only its ids are
/// drawn (the model's vocabulary is larger), and the streamed text is its decoding of the tokens.
fn generation_streams_the_tokenizers_text(tokenizer: &HfTokenizer) {
    let device = brainfloat_test_support::test_device();
    let model = GptConfig::new(640, 1, 2, 32, 64).init(&device).unwrap();
    let options = GenerateOptions {
        max_tokens: 40,
        sampling: Sampling {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 5,
        },
        stop_at_end_of_text: false,
        kv_cache: true,
    };
    let mut pieces = Vec::new();
    let out = generate(&model, tokenizer, &[], &options, &device, |piece| {
        pieces.push(piece.to_string())
    })
    .unwrap();
    assert_eq!(out.prompt_tokens, 1, "the separator");
    assert_eq!(out.tokens.len(), 40);
    assert!(
        out.tokens
            .iter()
            .all(|&t| (t as usize) < tokenizer.vocab_size())
    );
    assert_eq!(pieces.concat(), out.text);
    assert_eq!(out.text, tokenizer.decode(&out.tokens));
}
