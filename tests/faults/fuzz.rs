//! Fuzzing on stable Rust: each parser of outside bytes gets inputs made by mutating a valid
//! one, in this process under `catch_unwind`. A panic is a crash; an error is the right answer
//! to a bad input, and acceptance the right answer to a mutation that happens to be valid.

use std::panic::{AssertUnwindSafe, catch_unwind};

use brainfloat_data::{Gpt2Tokenizer, Shard, Tokenizer};
use brainfloat_files::sha256_hex;
use brainfloat_generate::first_context;
use brainfloat_trainer::{
    ConfigSource, RecordOptimizer, RecordOptimizerConfig, TrainConfig, init_model, load_checkpoint,
    read_record, weights_from_safetensors,
};

use crate::{Base, data_file};

/// One parser's results.
pub struct Target {
    pub name: &'static str,
    pub tried: usize,
    pub refused: usize,
    pub accepted: usize,
    pub crashes: usize,
    /// The first crash's panic message and input length.
    pub first_crash: String,
}

/// splitmix64: a fixed seed, so the inputs are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `seed` with one to four mutations: a bit flipped, a byte set to a boundary value, a cut, a
/// chunk repeated, random bytes inserted, or eight bytes overwritten with a boundary integer
/// (where lengths and offsets live in headers).
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len().max(1));
        match rng.below(6) {
            0 if !bytes.is_empty() => bytes[at] ^= 1 << rng.below(8),
            1 if !bytes.is_empty() => bytes[at] = [0, 0xff, 0x7f, 0x80, b'"', b'{'][rng.below(6)],
            2 => bytes.truncate(at),
            3 if !bytes.is_empty() => {
                let len = 1 + rng.below(64.min(bytes.len() - at));
                let chunk = bytes[at..at + len].to_vec();
                bytes.splice(at..at, chunk);
            }
            4 => {
                let noise: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                bytes.splice(at.min(bytes.len())..at.min(bytes.len()), noise);
            }
            _ if bytes.len() >= 8 => {
                let value: u64 = [0, u64::MAX, 1 << 40, i32::MAX as u64, 7][rng.below(5)];
                let at = at.min(bytes.len() - 8);
                bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            _ => {}
        }
    }
    bytes
}

/// Runs `parse` on `count` mutations of `seed`.
fn fuzz(
    name: &'static str,
    seed: &[u8],
    count: usize,
    rng: &mut Rng,
    mut parse: impl FnMut(&[u8]) -> bool,
) -> Target {
    let mut target = Target {
        name,
        tried: 0,
        refused: 0,
        accepted: 0,
        crashes: 0,
        first_crash: String::new(),
    };
    for _ in 0..count {
        let input = mutate(seed, rng);
        target.tried += 1;
        match catch_unwind(AssertUnwindSafe(|| parse(&input))) {
            Ok(true) => target.accepted += 1,
            Ok(false) => target.refused += 1,
            Err(payload) => {
                target.crashes += 1;
                if target.first_crash.is_empty() {
                    let message = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    target.first_crash = format!("{message} (input of {} bytes)", input.len());
                }
            }
        }
    }
    target
}

pub fn fuzz_parsers(base: &Base) -> Vec<Target> {
    let dir = base.dir.join("fuzz");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(0xf022);
    let file = dir.join("input");
    let write = |bytes: &[u8]| std::fs::write(&file, bytes).unwrap();
    // Panics are counted, not printed.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));

    let mut targets = Vec::new();
    let shard = brainfloat_data::shard_bytes(&(0..300).map(|i| i % 512).collect::<Vec<u16>>());
    targets.push(fuzz(
        "token shard (`Shard::open`, vocabulary check)",
        &shard,
        3000,
        &mut rng,
        |input| {
            write(input);
            Shard::open(&file).and_then(|s| s.check_vocab(512)).is_ok()
        },
    ));

    let record = std::fs::read(&base.good).unwrap();
    targets.push(fuzz(
        "checkpoint record (`read_record`)",
        &record,
        3000,
        &mut rng,
        |input| {
            write(input);
            read_record(&file).is_ok()
        },
    ));

    let config = std::fs::read(&base.config).unwrap();
    targets.push(fuzz(
        "config TOML (`TrainConfig::load`)",
        &config,
        3000,
        &mut rng,
        |input| {
            let source = ConfigSource::Text {
                name: "fuzzed".into(),
                toml: String::from_utf8_lossy(input).into_owned(),
            };
            TrainConfig::load(&source, &[]).is_ok()
        },
    ));

    let prompt = "The state of the Union is strong. 12345 \u{1F600} \u{00e9}".as_bytes();
    let tokenizer = Gpt2Tokenizer::new();
    let train_config = TrainConfig::load(&ConfigSource::File(base.config.clone()), &[]).unwrap();
    let shape = train_config.shape().clone();
    targets.push(fuzz(
        "prompt (tokenizer and context check)",
        prompt,
        3000,
        &mut rng,
        |input| {
            let tokens = tokenizer.encode(&String::from_utf8_lossy(input));
            first_context(&tokens, &shape, tokenizer.document_separator()).is_ok()
        },
    ));

    let device = brainfloat_backend::Backend::from_env()
        .unwrap()
        .device()
        .unwrap();
    let model: brainfloat_gpt::Gpt =
        init_model(&train_config, &device, train_config.train.seed).unwrap();
    let weights = std::fs::read(data_file(&base.good, "model")).unwrap();
    targets.push(fuzz(
        "weights (safetensors, `weights_from_safetensors`)",
        &weights,
        400,
        &mut rng,
        |input| weights_from_safetensors(model.clone(), input).is_ok(),
    ));

    // Optimizer state behind a record that carries its checksum, so that parsing is reached.
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let source = base.good.parent().unwrap();
    for entry in std::fs::read_dir(source).unwrap().flatten() {
        std::fs::copy(entry.path(), state_dir.join(entry.file_name())).unwrap();
    }
    let record_path = state_dir.join("step_000002.json");
    let optim_path = data_file(&record_path, "optim");
    let optim = std::fs::read(&optim_path).unwrap();
    let record_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    targets.push(fuzz(
        "optimizer state (safetensors, `load_checkpoint`)",
        &optim,
        300,
        &mut rng,
        |input| {
            std::fs::write(&optim_path, input).unwrap();
            let mut json = record_json.clone();
            json["optimizer"]["sha256"] = sha256_hex(input).into();
            std::fs::write(&record_path, serde_json::to_vec(&json).unwrap()).unwrap();
            let optimizer = RecordOptimizer::new(RecordOptimizerConfig::default());
            load_checkpoint(&record_path, model.clone(), optimizer, &device).is_ok()
        },
    ));

    std::panic::set_hook(hook);
    let _ = std::fs::remove_dir_all(&dir);
    targets
}
