//! GPT-2 tokenizing of text into shards, on small fixture text (no network).

use brainfloat_data::{
    DocumentSource, END_OF_TEXT, Gpt2Tokenizer, Shard, ShardOptions, Tokenizer, text_files,
    tokenize_to_shards,
};

#[test]
fn documents_get_gpt2_ids_after_end_of_text() {
    let tokenizer = Gpt2Tokenizer::new();
    // GPT-2's own ids: "Hello" 15496, " world" 995.
    assert_eq!(
        tokenizer.encode_document("Hello world"),
        [END_OF_TEXT, 15496, 995]
    );
    let text = "Fellow-Citizens of the Senate and House of Representatives:";
    let tokens = tokenizer.encode_document(text);
    assert_eq!(tokenizer.decode(&tokens[1..]), text);
    // Special-token text inside a document stays ordinary text.
    assert!(!tokenizer.encode_document("a <|endoftext|> b")[1..].contains(&END_OF_TEXT));
}

#[test]
fn text_files_become_train_and_val_shards() {
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts");
    std::fs::create_dir(&texts).unwrap();
    for i in 0..5 {
        std::fs::write(
            texts.join(format!("{i}.txt")),
            format!("Document number {i}."),
        )
        .unwrap();
    }
    std::fs::write(texts.join("notes.md"), "not a .txt file").unwrap();
    let files = text_files(&texts).unwrap();
    assert_eq!(files.len(), 5);
    let out = dir.path().join("shards");
    let stats = tokenize_to_shards(
        &Gpt2Tokenizer::new(),
        DocumentSource::Text(files).documents().unwrap(),
        &out,
        &ShardOptions {
            name: "mine".into(),
            val_every: 5,
            shard_tokens: usize::MAX,
        },
        |_, _| {},
    )
    .unwrap();
    assert_eq!((stats.documents, stats.val_tokens > 0), (5, true));
    let train = Shard::open(&out.join("mine_train_000.bin")).unwrap();
    let val = Shard::open(&out.join("mine_val_000.bin")).unwrap();
    assert_eq!(train.len(), stats.train_tokens);
    assert_eq!(val.len(), stats.val_tokens);
    // Document 4 (the 5th) is the validation one.
    let tokenizer = Gpt2Tokenizer::new();
    assert_eq!(
        tokenizer.decode(&val.window(1, val.len() - 1).unwrap()),
        "Document number 4."
    );
    assert_eq!(train.token(0).unwrap(), END_OF_TEXT);
    train.check_vocab(50257).unwrap();

    let err = text_files(&dir.path().join("shards"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no .txt files here"), "{err}");
}
