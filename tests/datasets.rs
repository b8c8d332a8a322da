//! A JSON Lines file and a Parquet file (written by pyarrow, from PyPI, in the test) become
//! shards whose tokens equal the `.txt` route's for the same documents; shards close at a set
//! size with documents kept whole; a missing field or column is named.

use std::ffi::OsStr;
use std::path::Path;

use brainfloat_data::{
    DocumentSource, END_OF_TEXT, Gpt2Tokenizer, Shard, ShardOptions, shard_paths,
    tokenize_to_shards,
};
use brainfloat_tests::{python_output, torch_python};

const DOCUMENTS: [&str; 7] = [
    "The state of the Union is strong.",
    "Ünïcödé naïve café — 東京 🚀",
    "Line one.\nLine two.\n\n  Indented after a blank line.",
    "Quotes \"inside\" and a backslash \\ and a tab\there.",
    "<|endoftext|> as plain text.",
    "Fellow-Citizens of the Senate and of the House of Representatives:",
    "1790–2021: two hundred and thirty-one years of addresses.",
];

/// Every token of the shards `{dir}/{name}_{split}_*.bin`, in order, and how many shards.
fn tokens(dir: &Path, name: &str, split: &str) -> (Vec<u32>, usize) {
    let paths = shard_paths(&dir.join(format!("{name}_{split}_*.bin"))).unwrap();
    let mut all = Vec::new();
    for path in &paths {
        let shard = Shard::open(path).unwrap();
        all.extend(shard.window(0, shard.len()).unwrap());
    }
    (all, paths.len())
}

/// The error of the first document of `path`'s `field`.
fn first_error(path: &Path, field: &str) -> String {
    let mut documents = DocumentSource::at(path, field)
        .unwrap()
        .documents()
        .unwrap();
    documents.next().unwrap().unwrap_err().to_string()
}

/// Both splits under `a` hold `b`'s tokens in `b`'s shard count.
fn assert_same_splits(a: &Path, b: &Path) {
    for split in ["train", "val"] {
        assert_eq!(tokens(a, "set", split), tokens(b, "set", split), "{split}");
    }
}

fn shards(source: &DocumentSource, out: &Path, shard_tokens: usize) {
    let options = ShardOptions {
        name: "set".into(),
        val_every: 3,
        shard_tokens,
    };
    let documents = source.documents().unwrap();
    let stats =
        tokenize_to_shards(&Gpt2Tokenizer::new(), documents, out, &options, |_, _| {}).unwrap();
    assert_eq!(stats.documents, DOCUMENTS.len());
}

#[test]
fn jsonl_and_parquet_give_the_tokens_of_the_text_route() {
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts");
    std::fs::create_dir(&texts).unwrap();
    for (i, doc) in DOCUMENTS.iter().enumerate() {
        std::fs::write(texts.join(format!("{i:02}.txt")), doc).unwrap();
    }
    let jsonl = dir.path().join("set.jsonl");
    let lines: Vec<String> = DOCUMENTS
        .iter()
        .map(|doc| serde_json::json!({"id": 1, "content": doc}).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n\n").unwrap();

    let text_out = dir.path().join("from_text");
    shards(
        &DocumentSource::at(&texts, "content").unwrap(),
        &text_out,
        usize::MAX,
    );
    let jsonl_out = dir.path().join("from_jsonl");
    shards(
        &DocumentSource::at(&jsonl, "content").unwrap(),
        &jsonl_out,
        usize::MAX,
    );
    assert_same_splits(&jsonl_out, &text_out);
    let (train, _) = tokens(&text_out, "set", "train");
    assert_eq!(train[0], END_OF_TEXT);

    // Small shards: several per split, each starting at a document, the same tokens in all.
    let small_out = dir.path().join("small");
    shards(
        &DocumentSource::at(&jsonl, "content").unwrap(),
        &small_out,
        8,
    );
    let (small_train, count) = tokens(&small_out, "set", "train");
    assert!(count > 1, "{count} shards");
    assert_eq!(small_train, train);
    for path in shard_paths(&small_out.join("set_train_*.bin")).unwrap() {
        assert_eq!(
            Shard::open(&path).unwrap().token(0).unwrap(),
            END_OF_TEXT,
            "{path:?}"
        );
    }

    // Named errors.
    let err = first_error(&jsonl, "body");
    assert!(
        err.contains("set.jsonl") && err.contains("line 1: no field `body`"),
        "{err}"
    );

    let Some(python) = torch_python() else {
        return;
    };
    let parquet = dir.path().join("set.parquet");
    let script = "import json, sys, pyarrow, pyarrow.parquet as pq\n\
                  docs = json.loads(sys.argv[1])\n\
                  table = pyarrow.table({'id': list(range(len(docs))), 'content': docs})\n\
                  pq.write_table(table, sys.argv[2], row_group_size=3)\n";
    let documents = serde_json::to_string(&DOCUMENTS).unwrap();
    let args = [
        OsStr::new("-c"),
        OsStr::new(script),
        OsStr::new(&documents),
        parquet.as_os_str(),
    ];
    python_output(&python, &args);
    let parquet_out = dir.path().join("from_parquet");
    shards(
        &DocumentSource::at(&parquet, "content").unwrap(),
        &parquet_out,
        usize::MAX,
    );
    assert_same_splits(&parquet_out, &text_out);
    let err = match DocumentSource::at(&parquet, "body").unwrap().documents() {
        Ok(_) => panic!("a column that is not there"),
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("no column `body` (columns: id, content)"),
        "{err}"
    );
    let err = first_error(&parquet, "id");
    assert!(err.contains("not text"), "{err}");
}
