//! A vocabulary over 65,536 trains end to end: token ids past 16 bits go into version-2 shards
//! of 32-bit ids, the loader reads them, and the model learns them (the loss falls), while
//! shards whose ids fit in 16 bits stay in llm.c's version 1.

use brainfloat_data::{SHARD_VERSION, SHARD_VERSION_U32, Shard, write_shard};
use brainfloat_trainer::{ConfigSource, TrainConfig, Trainer};

/// `header[1]` of the shard at `path`.
fn version(path: &std::path::Path) -> i32 {
    let bytes = std::fs::read(path).unwrap();
    i32::from_le_bytes(bytes[4..8].try_into().unwrap())
}

#[test]
fn a_vocabulary_over_65536_trains_through_32_bit_shards() {
    let dir = tempfile::tempdir().unwrap();
    // A repeating pattern of ids spread over 0..70,000: learnable, and most past 16 bits.
    let pattern: Vec<u32> = (0..16).map(|i| 65_000 + i * 311).collect();
    let tokens: Vec<u32> = pattern.iter().copied().cycle().take(40_000).collect();
    let shard = dir.path().join("wide_000.bin");
    write_shard(&shard, &tokens).unwrap();
    assert_eq!(version(&shard), SHARD_VERSION_U32);
    let narrow = dir.path().join("narrow.bin");
    write_shard(&narrow, &[1u32, 2, 65_535]).unwrap();
    assert_eq!(version(&narrow), SHARD_VERSION);
    let read = Shard::open(&shard).unwrap();
    assert_eq!(read.window(0, 16).unwrap(), pattern);

    // The shipped tiny config, on this shard, at this vocabulary.
    let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/tiny.toml");
    let set = |key: &str, value: String| format!("{key}={value}");
    let overrides = [
        set("model.vocab_size", "70016".into()),
        set("data.train", shard.display().to_string()),
        set("data.val", shard.display().to_string()),
        set("train.steps", "12".into()),
        set("train.batch_size", "4".into()),
        set("train.seq_len", "32".into()),
        set("train.warmdown_steps", "0".into()),
        set("optim.head_lr", "0.01".into()),
        set("eval.every", "0".into()),
        set("eval.tokens", "1024".into()),
        set("eval.sample_every", "0".into()),
        set("output.dir", dir.path().join("out").display().to_string()),
        set("output.progress", "false".into()),
    ];
    let config = TrainConfig::load(&ConfigSource::File(tiny), &overrides).unwrap();
    let device = brainfloat_test_support::test_device();
    let mut trainer = Trainer::builder(config).build(&device).unwrap();
    let first = trainer.evaluate().unwrap().val_loss;
    let mut losses = Vec::new();
    for _ in 0..12 {
        losses.push(trainer.train_step().unwrap().loss);
    }
    let last = trainer.evaluate().unwrap().val_loss;
    println!("val loss {first:.3} → {last:.3}; train {losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    // ln(70016) ≈ 11.16 at the start; a 16-token cycle is learnt far below it.
    assert!(first > 10.0 && last < first - 2.0, "{first} → {last}");
}
