//! What resuming a checkpoint under a changed config means, key by key.
//!
//! The model's shape is checked tensor by tensor when the weights load (a mismatch stops with
//! the tensor named). Everything else may change on resume, and each change is said:
//! - the precision policy: the checkpoint's master weights and optimizer state are converted to
//!   the new policy's dtypes (widening is exact; narrowing rounds once, to nearest even);
//! - the batch size, sequence length, accumulation or rank count: the token stream continues at
//!   the checkpoint's position, but every batch from there on differs from the original run's;
//! - the step count and warmup/warmdown: the learning-rate schedule is recomputed;
//! - anything else (rates, evaluation, data paths): applied from the resumed step on.

use crate::config::{ConfigChange, TrainConfig};
use crate::schedule::Schedule;
use brainfloat_data::LoaderPosition;

/// What a changed key does to the model a run loads: said by `eval` too.
const MODEL_KEYS: [&str; 3] = ["model.size", "model.vocab_size", "train.precision"];

/// Keys that decide which tokens form each batch.
const DATA_STREAM_KEYS: [&str; 5] = [
    "train.batch_size",
    "train.seq_len",
    "train.grad_accum_steps",
    "train.ranks",
    "data.train",
];

/// Keys of the learning-rate schedule.
const SCHEDULE_KEYS: [&str; 5] = [
    "train.steps",
    "train.warmup_steps",
    "train.warmdown_steps",
    "train.schedule",
    "train.min_lr_ratio",
];

/// One difference between a checkpoint's run and the run resuming it, with what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeNote {
    /// The key, its value in the checkpoint's config and now.
    pub change: ConfigChange,
    /// What the change does to the resumed run.
    pub meaning: String,
}

impl std::fmt::Display for ResumeNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ConfigChange { key, old, new } = &self.change;
        write!(
            f,
            "{key} changed since the checkpoint: {old} → {new}: {}",
            self.meaning
        )
    }
}

/// The differences between `saved` (a checkpoint's config, at `step` with rank 0 at `position`)
/// and `config`, each explained. Output paths and the log format are not listed.
pub fn resume_notes(
    saved: &TrainConfig,
    config: &TrainConfig,
    step: usize,
    position: Option<LoaderPosition>,
) -> Vec<ResumeNote> {
    config
        .changes_from(saved)
        .into_iter()
        .filter(|change| !change.key.starts_with("output."))
        .map(|change| {
            let meaning = meaning(&change.key, saved, config, step, position);
            ResumeNote { change, meaning }
        })
        .collect()
}

/// The resume notes about the model alone (its size and precision): what `eval` of a
/// checkpoint says.
pub fn model_notes(saved: &TrainConfig, config: &TrainConfig) -> Vec<ResumeNote> {
    resume_notes(saved, config, 0, None)
        .into_iter()
        .filter(|note| MODEL_KEYS.contains(&note.change.key.as_str()))
        .collect()
}

fn meaning(
    key: &str,
    saved: &TrainConfig,
    config: &TrainConfig,
    step: usize,
    position: Option<LoaderPosition>,
) -> String {
    if key == "train.precision" {
        return "the checkpoint's weights and optimizer state are converted to the new policy's \
                dtypes (each state tensor to its parameter's dtype; fp32 → bf16 rounds once)"
            .into();
    }
    if key.starts_with("model.") {
        return "the model's shape changes: its tensors are checked against the checkpoint's"
            .into();
    }
    if key == "train.grad_accum_steps" && saved.train.batch_size == config.train.batch_size {
        return format!(
            "each step still reads {} sequences, now as {} micro-batch(es) of {}: the same \
             tokens, summed in another order",
            config.train.batch_size,
            config.train.grad_accum_steps,
            config.micro_batch_size()
        );
    }
    if DATA_STREAM_KEYS.contains(&key) {
        let at = position.map_or_else(String::new, |p| {
            format!(" (shard {}, token {})", p.shard, p.offset)
        });
        return format!(
            "the data continues at the checkpoint's position{at} with no token skipped or \
             repeated, but every batch from here on differs from the original run's (now {} \
             rank(s) × {} micro-step(s) × {} sequences of {} tokens)",
            config.train.ranks,
            config.train.grad_accum_steps,
            config.micro_batch_size(),
            config.train.seq_len
        );
    }
    if SCHEDULE_KEYS.contains(&key) {
        let (before, now) = (saved.schedule(), config.schedule());
        let multiplier = |s: Schedule| {
            if step < s.total_steps {
                format!("{:.4}", s.multiplier(step))
            } else {
                "past the end".into()
            }
        };
        return format!(
            "the learning-rate schedule is recomputed: its multiplier at step {} is {} (was {})",
            step + 1,
            multiplier(now),
            multiplier(before)
        );
    }
    if key == "train.seed" {
        return "no effect: the weights come from the checkpoint".into();
    }
    "applied from the resumed step on".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    fn config(overrides: &[&str]) -> TrainConfig {
        let toml = include_str!("../../../configs/tiny.toml");
        let source = ConfigSource::Text {
            name: "tiny".into(),
            toml: toml.into(),
        };
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(&source, &overrides).unwrap()
    }

    #[test]
    fn every_changed_key_is_named_with_old_and_new_values() {
        let saved = config(&[]);
        let now = config(&[
            "train.precision=fp32",
            "train.batch_size=32",
            "train.steps=300",
            "optim.matrix_lr=0.01",
            "output.dir=elsewhere",
        ]);
        let position = LoaderPosition {
            shard: 0,
            offset: 1024,
        };
        let notes = resume_notes(&saved, &now, 50, Some(position));
        let keys: Vec<&str> = notes.iter().map(|n| n.change.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "optim.matrix_lr",
                "train.batch_size",
                "train.precision",
                "train.steps"
            ]
        );
        let text: Vec<String> = notes.iter().map(ToString::to_string).collect();
        assert_eq!(
            text[1],
            "train.batch_size changed since the checkpoint: 16 → 32: the data continues at the \
             checkpoint's position (shard 0, token 1024) with no token skipped or repeated, but \
             every batch from here on differs from the original run's (now 1 rank(s) × 1 \
             micro-step(s) × 32 sequences of 64 tokens)"
        );
        assert!(text[2].contains("\"bf16\" → \"fp32\": the checkpoint's weights and optimizer"));
        // 150 steps with warmdown 45: step 51 is flat (1); of 300 steps it still is.
        assert!(text[3].ends_with("multiplier at step 51 is 1.0000 (was 1.0000)"));
        assert_eq!(model_notes(&saved, &now).len(), 1);
        assert!(resume_notes(&saved, &saved, 50, None).is_empty());
    }

    #[test]
    fn accumulation_alone_keeps_the_tokens_of_each_step() {
        let notes = resume_notes(
            &config(&[]),
            &config(&["train.grad_accum_steps=2"]),
            10,
            None,
        );
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0]
                .meaning
                .starts_with("each step still reads 16 sequences, now as 2 micro-batch(es) of 8")
        );
    }
}
