//! The training loop of the record: micro-batches with gradient accumulation, the optimizers per
//! group, the schedule, evaluation, checkpoints, and the plugins.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use brainfloat_data::{
    DistributedLoader, LoaderPosition, ShardIdentity, Tokenizer, shard_paths, tokenizer_at,
};
use brainfloat_distributed::{Collectives, LocalSync, all_reduce_gradients};
use brainfloat_generate::{GenerateOptions, Sampling, first_context, generate, inference_model};
use brainfloat_gpt::{Batch, Cache, Gpt, LanguageModel};
use brainfloat_precision::{PrecisionPolicy, apply_policy};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};

use crate::checkpoint::{
    Restored, RunState, checkpoint_records, load_checkpoint, load_weights, random_id, record_name,
    save_checkpoint,
};
use crate::config::{ConfigError, NonFinitePolicy, TrainConfig};
use crate::error::TrainError;
use crate::faults::{Injections, NonFinite};
use crate::history::{keep_last, remove_orphans, set_aside};
use crate::optim::{ParamGroup, RecordOptimizer, RecordOptimizerConfig, clip_factor};
use crate::output::OutputFolder;
use crate::plugins::{
    Action, CheckpointInfo, EvalStats, Plugin, RunInfo, RunSummary, SampleStats, StepStats,
};
use crate::resume::resume_notes;
use crate::schedule::Schedule;

mod evaluate;
mod start;

use evaluate::SamplePrompt;

pub use evaluate::validation_loss;
pub use start::{TrainerBuilder, init_model};

/// How a run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The record's initialisation, seeded by `train.seed`.
    Fresh,
    /// Weights from a safetensors file with PyTorch names (made here or by PyTorch).
    Init(PathBuf),
    /// Weights of a Hugging Face GPT-2 folder (`config.json`, `model.safetensors`); the config's
    /// model section must be the folder's shape ([`read_hf_shape`](crate::read_hf_shape)).
    InitHf(PathBuf),
    /// A checkpoint record (`step_*.json`), or the newest one in the output folder.
    Resume(Option<PathBuf>),
}

/// A training run: model, optimizer, data and plugins, made by a [`TrainerBuilder`]. Generic
/// over the model: the record's [`Gpt`] unless named (`Trainer<Gpt2>`); the command line runs
/// the one the config's `model.arch` names ([`ModelShape::dispatch`](brainfloat_gpt::ModelShape::dispatch)).
pub struct Trainer<M: LanguageModel = Gpt> {
    config: TrainConfig,
    device: Device,
    model: Owned<M>,
    /// What the training forward passes read besides the weights (the rotary tables).
    cache: Cache,
    optimizer: RecordOptimizer,
    schedule: Schedule,
    train: DistributedLoader,
    val_paths: Vec<PathBuf>,
    step: usize,
    plugins: Vec<Box<dyn Plugin>>,
    last_val_loss: Option<f64>,
    sync: Box<dyn Collectives>,
    last_checkpoint: Option<PathBuf>,
    skipped_steps: usize,
    /// Steps skipped since the last applied one (`train.max_skipped_steps`).
    skipped_in_a_row: usize,
    /// The fault suite's non-finite values (none without the `testing` feature).
    injected: Injections,
    /// The run's identity, in every checkpoint record: made at a fresh start, kept on resume.
    run_id: String,
    /// The training shards' identities, recorded with each checkpoint.
    shards: Vec<ShardIdentity>,
    /// Rank 0's samples during training (`eval.sample_every`), when on.
    samples: Option<SamplePrompt>,
    /// Rank 0's claim on the output folder, held for the run.
    _output: Option<OutputFolder>,
}

/// A value that a method can take by value and put back: the model during an optimizer step,
/// which then holds the only handle to each parameter and updates it in place.
struct Owned<T>(Option<T>);

impl<T> Owned<T> {
    fn new(value: T) -> Self {
        Self(Some(value))
    }

    /// Replaces the value with `f` of it.
    fn update(&mut self, f: impl FnOnce(T) -> T) {
        let value = self.0.take().expect("a value, outside an update");
        self.0 = Some(f(value));
    }
}

impl<T> std::ops::Deref for Owned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("a value, outside an update")
    }
}

impl<T> std::ops::DerefMut for Owned<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("a value, outside an update")
    }
}

/// How samples during training are drawn: nanoGPT's `sample.py` defaults (temperature 0.8,
/// top-k 200), from the run's seed, so that samples of one run differ only by the weights.
const SAMPLE_TEMPERATURE: f32 = 0.8;
/// See [`SAMPLE_TEMPERATURE`].
const SAMPLE_TOP_K: usize = 200;

impl<M: LanguageModel> Trainer<M> {
    /// The trainer's sync, everything else dropped (the output folder's claim released).
    fn into_sync(self) -> Box<dyn Collectives> {
        self.sync
    }

    /// The model as it is now.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The optimizers and their state.
    pub fn optimizer(&self) -> &RecordOptimizer {
        &self.optimizer
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The autodiff device the model trains on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Where the training data continues.
    pub fn data_position(&self) -> LoaderPosition {
        self.train.position()
    }

    /// Runs the remaining steps, evaluating and checkpointing as configured and as plugins ask.
    pub fn run(&mut self) -> Result<RunSummary, TrainError> {
        let shape = self.model.shape();
        let info = RunInfo {
            start_step: self.step,
            total_steps: self.config.train.steps,
            tokens_per_step: self.config.tokens_per_step(),
            num_params: self.model.num_params(),
            shape: shape.describe(),
            flops_per_token: shape.training_flops_per_token(self.config.train.seq_len),
            policy: *self.model.policy(),
            dir: self.config.output.dir.clone(),
        };
        self.each(|p| p.on_train_start(&info))?;
        let started = Instant::now();
        let mut tokens = 0usize;
        let mut stopped_early = false;
        while self.step < self.config.train.steps {
            let stats = self.train_step()?;
            tokens += info.tokens_per_step;
            let (mut checkpoint, mut stop) = (false, false);
            for plugin in &mut self.plugins {
                match plugin.on_step(&stats)? {
                    Action::Continue => {}
                    Action::Checkpoint => checkpoint = true,
                    Action::Stop => stop = true,
                }
            }
            if self.sync.world_size() > 1 {
                // Every rank checkpoints and stops at the same step as the others (a signal
                // may reach one rank only; checkpoint plugins run on rank 0 alone), or a rank
                // would wait for the others in a collective they never enter.
                checkpoint = self.sync.any(checkpoint)?;
                stop = self.sync.any(stop)?;
            }
            // A stop request is answered before evaluation and sampling, which may take longer
            // than the grace a scheduler gives between SIGTERM and SIGKILL.
            if !stop {
                let every = self.config.eval.every;
                let last = self.step == self.config.train.steps;
                if last || (every > 0 && self.step.is_multiple_of(every)) {
                    stop = !self.evaluate_and_report()?;
                }
            }
            if checkpoint || stop {
                self.checkpoint()?;
            }
            if stop {
                stopped_early = true;
                tracing::warn!(step = self.step, "stopped on request after a checkpoint");
                break;
            }
        }
        if self.last_val_loss.is_none() && !stopped_early {
            self.evaluate_and_report()?;
        }
        let elapsed = started.elapsed();
        let summary = RunSummary {
            steps: self.step,
            val_loss: self.last_val_loss,
            tokens_per_sec: tokens as f64 / elapsed.as_secs_f64().max(1e-9),
            elapsed,
            skipped_steps: self.skipped_steps,
            stopped_early,
        };
        self.each(|p| p.on_train_end(&summary))?;
        Ok(summary)
    }

    fn each(
        &mut self,
        mut hook: impl FnMut(&mut dyn Plugin) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        self.plugins.iter_mut().try_for_each(|p| hook(p.as_mut()))
    }

    /// One optimizer step: `grad_accum_steps` micro-batches, gradients summed (fp32 sums for
    /// fp32 parameters) and averaged over the ranks, checked, then applied (scaled by
    /// `1/grad_accum_steps` inside the optimizer) or, if not finite, skipped or refused.
    // Never inlined: a profiler cuts a run into steps at this function's entry
    // (`cargo xtask step-files`); one call a step costs nothing beside the step.
    #[inline(never)]
    pub fn train_step(&mut self) -> Result<StepStats, TrainError> {
        let started = Instant::now();
        let (grads, losses) = self.forward_backward()?;
        let sync_started = Instant::now();
        let grads = all_reduce_gradients(&*self.model, grads, self.sync.as_mut())?;
        let sync_time = sync_started.elapsed();
        let check = self.check(&grads, losses)?;
        let lr_multiplier = self.schedule.multiplier(self.step);
        let skipped = !check.is_finite();
        if skipped {
            self.skip(&check)?;
        } else {
            self.apply(grads, check.grad_scale, lr_multiplier);
        }
        self.step += 1;
        let step_time = started.elapsed();
        let (micro, seq_len) = self.train.batch_shape();
        let step_tokens = (self.config.train.grad_accum_steps * micro * seq_len) as f64;
        Ok(StepStats {
            step: self.step,
            loss: check.loss,
            last_micro_loss: check.last_micro_loss,
            lr_multiplier,
            step_time,
            tokens_per_sec: step_tokens / step_time.as_secs_f64().max(1e-9),
            grad_norm: check.grad_norm,
            skipped,
            sync_time,
            lost_updates: self.optimizer.take_probe(),
        })
    }

    /// The step's `grad_accum_steps` micro-batches, each forward and backward, their gradients
    /// summed; and each micro-batch's loss, on the device. The step's tokens go to the device
    /// in one copy, and its losses stay there until the check reads them: no host sync between
    /// micro-steps.
    fn forward_backward(&mut self) -> Result<(GradientsParams, Tensor<1>), TrainError> {
        let accum_steps = self.config.train.grad_accum_steps;
        let (micro, seq_len) = self.train.batch_shape();
        let poison_loss = self.injected.poisons(NonFinite::Loss, self.step + 1);
        let windows = (0..accum_steps)
            .map(|_| self.train.next_window())
            .collect::<Result<Vec<_>, _>>()?;
        let windows: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
        let mut accumulator = GradientsAccumulator::new();
        let mut losses = Vec::with_capacity(accum_steps);
        for batch in Batch::from_windows(&windows, micro, seq_len, &self.device)? {
            let mut loss = self.model.forward(&batch, &self.cache)?;
            if poison_loss {
                loss = loss.mul_scalar(f64::NAN);
            }
            losses.push(loss.clone().detach());
            let grads = GradientsParams::from_grads(loss.backward(), &*self.model);
            accumulator.accumulate(&*self.model, grads);
        }
        Ok((accumulator.grads(), Tensor::cat(losses, 0)))
    }

    /// The step's mean loss over the ranks and the global norm of its gradients as the update
    /// would scale them, read before any update: a bad step is never applied, so nothing is
    /// kept aside to undo it (a second handle to the weights would make every in-place update
    /// copy).
    fn check(
        &mut self,
        grads: &GradientsParams,
        losses: Tensor<1>,
    ) -> Result<StepCheck, TrainError> {
        let accum_steps = self.config.train.grad_accum_steps;
        let grad_scale = if self.injected.poisons(NonFinite::Gradient, self.step + 1) {
            f64::NAN
        } else {
            1.0 / accum_steps as f64
        };
        let grad_norm = self.optimizer.grad_norm(&*self.model, grads, grad_scale);
        let grad_scale = grad_scale * clip_factor(grad_norm, self.config.optim.max_grad_norm);
        let losses: Vec<f64> = (losses.into_data().try_to_vec::<f32>())
            .expect("the losses are fp32")
            .into_iter()
            .map(f64::from)
            .collect();
        let loss = self
            .sync
            .mean(losses.iter().sum::<f64>() / accum_steps as f64)?;
        Ok(StepCheck {
            loss,
            last_micro_loss: losses[accum_steps - 1],
            grad_norm,
            grad_scale,
        })
    }

    /// The optimizers' update with `grads` scaled by `grad_scale`, at the schedule's rate.
    fn apply(&mut self, grads: GradientsParams, grad_scale: f64, lr_multiplier: f64) {
        let probe_every = self.config.eval.lost_update_every;
        if probe_every > 0 && self.step.is_multiple_of(probe_every) {
            self.optimizer.probe_next_step();
        }
        let step = self.step;
        self.model.update(|model| {
            self.optimizer
                .step(model, grads, grad_scale, lr_multiplier, step)
        });
        self.skipped_in_a_row = 0;
    }

    /// A step whose loss or gradient norm is not finite: the run ends under
    /// `train.on_non_finite = "stop"`, or after `train.max_skipped_steps` skipped in a row;
    /// otherwise the step is counted and dropped.
    fn skip(&mut self, check: &StepCheck) -> Result<(), TrainError> {
        let StepCheck {
            loss, grad_norm, ..
        } = *check;
        let policy = self.config.train.on_non_finite;
        tracing::warn!(
            step = self.step + 1,
            loss,
            grad_norm,
            ?policy,
            "non-finite step"
        );
        if policy == NonFinitePolicy::Stop {
            return Err(TrainError::NonFinite {
                step: self.step + 1,
                loss,
                grad_norm,
                last_checkpoint: self.last_checkpoint.clone(),
            });
        }
        self.skipped_steps += 1;
        self.skipped_in_a_row += 1;
        let limit = self.config.train.max_skipped_steps;
        if limit > 0 && self.skipped_in_a_row >= limit {
            return Err(TrainError::OnlySkipping {
                steps: self.skipped_in_a_row,
                step: self.step + 1,
                last_checkpoint: self.last_checkpoint.clone(),
            });
        }
        Ok(())
    }

    /// Every rank's data position, by rank (a collective: every rank calls it).
    fn data_positions(&mut self) -> Result<Vec<LoaderPosition>, TrainError> {
        let own = self.train.position();
        let shards = self.sync.all_gather(own.shard as u64)?;
        let offsets = self.sync.all_gather(own.offset as u64)?;
        Ok(shards
            .into_iter()
            .zip(offsets)
            .map(|(shard, offset)| LoaderPosition {
                shard: shard as usize,
                offset: offset as usize,
            })
            .collect())
    }

    /// Stops every rank after an error on this one (see [`Collectives::abort`]).
    pub fn abort(&mut self, code: i32) {
        self.sync.abort(code);
    }

    /// Writes a checkpoint of the current step and tells the plugins; on ranks other than 0,
    /// which hold the same model, nothing is written and the record's path is returned.
    pub fn checkpoint(&mut self) -> Result<PathBuf, TrainError> {
        let written = self.write_checkpoint();
        // The other ranks wait, outside the watchdog's limit, until rank 0 has written it.
        self.sync.wait_for_leader()?;
        written
    }

    fn write_checkpoint(&mut self) -> Result<PathBuf, TrainError> {
        let positions = self.data_positions()?;
        if !self.sync.is_leader() {
            return Ok(self.config.output.dir.join(record_name(self.step)));
        }
        let dir = &self.config.output.dir;
        // The disk may have filled since the start: refused now, with the last checkpoint kept.
        let params = self.model.num_params() as u64;
        crate::output::check_room(dir, params * 12, params * 8)?;
        let run = RunState {
            id: self.run_id.clone(),
            loader: positions,
            shards: self.shards.clone(),
            config: self.config.clone(),
        };
        let path = save_checkpoint(dir, &*self.model, &self.optimizer, self.step, &run)?;
        for removed in keep_last(dir, self.config.output.keep_last)? {
            tracing::info!(record = %removed.display(), "output.keep_last: removed an older checkpoint");
        }
        self.last_checkpoint = Some(path.clone());
        let info = CheckpointInfo {
            step: self.step,
            path: path.clone(),
        };
        self.each(|p| p.on_checkpoint(&info))?;
        Ok(path)
    }
}

/// What a step is checked by before it is applied: the mean loss over the ranks, the global
/// gradient norm, and the scale the update gives the summed gradients (`1/grad_accum_steps`,
/// times the clipping factor).
#[derive(Debug, Clone, Copy)]
struct StepCheck {
    loss: f64,
    /// This rank's loss of the step's last micro-batch.
    last_micro_loss: f64,
    grad_norm: f64,
    grad_scale: f64,
}

impl StepCheck {
    fn is_finite(&self) -> bool {
        self.loss.is_finite() && self.grad_norm.is_finite()
    }
}
