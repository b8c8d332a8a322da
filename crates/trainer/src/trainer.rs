//! The training loop of the record: micro-batches with gradient accumulation, the optimizers per
//! group, the schedule, evaluation, checkpoints, and the plugins.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use brainfloat_data::{
    DistributedLoader, LoaderPosition, ShardIdentity, Tokenizer, shard_paths, tokenizer_at,
};
use brainfloat_distributed::{Collectives, LocalSync, all_reduce_gradients};
use brainfloat_generate::{GenerateOptions, Sampling, first_context, generate, inference_model};
use brainfloat_gpt::{Batch, LanguageModel, Model};
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

/// A training run: model, optimizer, data and plugins. Generic over the model: [`Model`] (the
/// default) is the architecture the config's `model.arch` names; a program that knows its
/// architecture can name it (`Trainer<Gpt2>`, built by [`Trainer::of_model`]).
pub struct Trainer<M: LanguageModel = Model> {
    config: TrainConfig,
    device: Device,
    model: Owned<M>,
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

/// The tokenizer and the tokenized prompt of the samples during training.
struct SamplePrompt {
    tokenizer: Box<dyn Tokenizer + Send + Sync>,
    prompt: Vec<u32>,
}

/// How samples during training are drawn: nanoGPT's `sample.py` defaults (temperature 0.8,
/// top-k 200), from the run's seed, so that samples of one run differ only by the weights.
const SAMPLE_TEMPERATURE: f32 = 0.8;
/// See [`SAMPLE_TEMPERATURE`].
const SAMPLE_TOP_K: usize = 200;

impl SamplePrompt {
    /// The config's sample prompt, checked against the model as generation will check it.
    fn new(config: &TrainConfig) -> Result<Self, TrainError> {
        let tokenizer = tokenizer_at(config.data.tokenizer.as_deref())?;
        let prompt = tokenizer.encode(&config.eval.sample_prompt);
        first_context(&prompt, &config.shape()?, tokenizer.document_separator()).map_err(
            |err| ConfigError {
                key: "eval.sample_prompt".into(),
                problem: err.to_string(),
            },
        )?;
        Ok(Self { tokenizer, prompt })
    }
}

impl Trainer {
    /// Prepares a run on `device` (an autodiff device is made from it): checks the output folder
    /// is writable, builds the model the config names under its policy, opens and validates
    /// every shard, and starts the model as `start` says.
    pub fn new(config: TrainConfig, device: &Device, start: Start) -> Result<Self, TrainError> {
        Self::distributed(config, device, start, Box::new(LocalSync))
    }

    /// [`new`](Self::new) for one rank of a data-parallel run: reads this rank's slice of the
    /// data, averages gradients (fp32) and losses over the ranks of `sync` once per step, and
    /// writes checkpoints only on rank 0. `train.ranks` must be the number of ranks.
    ///
    /// A rank that fails here, under several ranks, ends them all (`Collectives::abort`, after
    /// logging why): the others wait for it in a collective, and dropping its sync would
    /// finalize MPI, which waits for them in turn.
    pub fn distributed(
        config: TrainConfig,
        device: &Device,
        start: Start,
        sync: Box<dyn Collectives>,
    ) -> Result<Self, TrainError> {
        Self::of_model(config, device, start, sync)
    }
}

impl<M: LanguageModel> Trainer<M> {
    /// [`Trainer::distributed`] with the model type `M`; the config's `model.arch` must be
    /// `M`'s architecture.
    pub fn of_model(
        config: TrainConfig,
        device: &Device,
        start: Start,
        sync: Box<dyn Collectives>,
    ) -> Result<Self, TrainError> {
        let mut held = Some(sync);
        let started =
            Self::assemble(config, device, &mut held).and_then(|mut trainer| {
                match trainer.start(start) {
                    Ok(()) => Ok(trainer),
                    Err(err) => {
                        held = Some(trainer.into_sync());
                        Err(err)
                    }
                }
            });
        started.map_err(|err| {
            if let Some(mut sync) = held.filter(|sync| sync.world_size() > 1) {
                tracing::error!(
                    "rank {} of {}: {err}; stopping all ranks",
                    sync.rank(),
                    sync.world_size()
                );
                sync.abort(1);
            }
            err
        })
    }

    /// The trainer's sync, everything else dropped (the output folder's claim released).
    fn into_sync(self) -> Box<dyn Collectives> {
        self.sync
    }

    /// Builds the trainer; `held` keeps the sync until the trainer takes it, so that a failure
    /// before then leaves it with the caller.
    fn assemble(
        config: TrainConfig,
        device: &Device,
        held: &mut Option<Box<dyn Collectives>>,
    ) -> Result<Self, TrainError> {
        let sync = held
            .as_deref()
            .expect("the sync is held until the trainer takes it");
        config.validate()?;
        check_ranks(&config, sync.world_size())?;
        let shape = config.shape()?;
        // Only rank 0 writes into the folder: it claims it (lock, stale temporaries, room for a
        // checkpoint: weights and Adam's or Muon's state, at most 3 × fp32 per parameter).
        let params = shape.num_params() as u64;
        let output = if sync.is_leader() {
            Some(OutputFolder::claim(
                &config.output.dir,
                params * 12,
                params * 8,
            )?)
        } else {
            None
        };
        let device = device.clone().autodiff();
        // Built first: `apply_policy` refuses a device without the policy's dtypes before the
        // shards are opened.
        let model = init_model_of::<M>(&config, &device, config.train.seed)?;

        // Headers now; token ids when a loader first opens a shard (not the whole dataset here).
        let train_paths = shard_paths(&config.data.train)?;
        let val_paths = shard_paths(&config.data.val)?;
        let micro = config.micro_batch_size();
        let seq_len = config.train.seq_len;
        let loader = |paths: Vec<PathBuf>| {
            DistributedLoader::new(paths, micro, seq_len, sync.rank(), config.train.ranks)?
                .with_vocab(shape.vocab_size())
        };
        let train = loader(train_paths)?;
        let shards = train.identities()?;
        // Fails now, not at the first evaluation, if the val shards cannot fill one batch.
        loader(val_paths.clone())?;

        let samples = (config.eval.sample_every > 0 && sync.is_leader())
            .then(|| SamplePrompt::new(&config))
            .transpose()?;
        let injected = Injections::from_environment()?;
        let optimizer = RecordOptimizer::new(optimizer_config(&config, model.policy()));
        let schedule = config.schedule();
        let trainer = Self {
            config,
            device,
            model: Owned::new(model),
            optimizer,
            schedule,
            train,
            val_paths,
            step: 0,
            plugins: Vec::new(),
            last_val_loss: None,
            sync: held
                .take()
                .expect("the sync is held until the trainer takes it"),
            last_checkpoint: None,
            skipped_steps: 0,
            skipped_in_a_row: 0,
            injected,
            run_id: random_id(),
            shards,
            samples,
            _output: output,
        };
        Ok(trainer)
    }

    /// Starts the model as `start` says (rank 0 first clears what failed writes left), then
    /// checks that every rank agrees on where it starts.
    fn start(&mut self, start: Start) -> Result<(), TrainError> {
        if self.sync.is_leader() {
            for orphan in remove_orphans(&self.config.output.dir)? {
                tracing::info!(
                    file = %orphan.display(),
                    "removed a file no checkpoint record names (a write that did not finish)"
                );
            }
        }
        match start {
            Start::Fresh => self.claim_fresh()?,
            Start::Init(path) => {
                self.claim_fresh()?;
                *self.model = load_weights(self.model.clone(), &path)?;
            }
            Start::InitHf(dir) => {
                self.claim_fresh()?;
                *self.model = crate::hf::load_hf_weights(self.model.clone(), &dir)?;
            }
            Start::Resume(path) => self.resume(path)?,
        }
        self.check_ranks_agree()
    }

    /// Under several ranks, one check before the first step that every rank runs the same
    /// config from the same step with the same gradient buckets (the parameters' names,
    /// shapes and dtypes in order): ranks that disagree would average unrelated numbers or
    /// wait in different collectives. Each is compared as a SHA-256 prefix, gathered from
    /// every rank.
    fn check_ranks_agree(&mut self) -> Result<(), TrainError> {
        let world = self.sync.world_size();
        if world == 1 {
            return Ok(());
        }
        let digest = |text: &str| -> u64 {
            let hex = brainfloat_files::sha256_hex(text.as_bytes());
            u64::from_str_radix(&hex[..16], 16).expect("hex digits")
        };
        let config = serde_json::to_string(&self.config).expect("the config serializes");
        let layout: String = brainfloat_precision::named_params(&*self.model)
            .into_iter()
            .map(|p| format!("{} {:?} {:?};", p.name, p.shape, p.tensor.dtype()))
            .chain([format!(
                "buckets of {}",
                brainfloat_distributed::BUCKET_ELEMENTS
            )])
            .collect();
        let checks = [
            ("the config", digest(&config)),
            ("the step it starts from", self.step as u64),
            ("the gradient buckets' layout", digest(&layout)),
        ];
        let mut disagree = Vec::new();
        for (what, value) in checks {
            let values = self.sync.all_gather(value)?;
            if values.iter().any(|v| *v != value) {
                disagree.push(what);
            }
        }
        if disagree.is_empty() {
            return Ok(());
        }
        Err(TrainError::Sync(brainfloat_distributed::SyncError {
            rank: self.sync.rank(),
            world_size: world,
            problem: format!(
                "the ranks disagree on {} (step {} here): every rank must run the same binary \
                 with the same config and checkpoint",
                disagree.join(", "),
                self.step
            ),
        }))
    }

    /// A fresh start (rank 0): an output folder holding checkpoints belongs to another run, whose
    /// `--resume` would otherwise pick this run's checkpoints or the other way round. Refused,
    /// unless `output.overwrite` moves them (and its metrics) into a subfolder.
    fn claim_fresh(&mut self) -> Result<(), TrainError> {
        if !self.sync.is_leader() {
            return Ok(());
        }
        let dir = &self.config.output.dir;
        let Some((step, newest)) = checkpoint_records(dir).into_iter().next() else {
            return Ok(());
        };
        let other = crate::checkpoint::read_record(&newest)
            .ok()
            .and_then(|record| record.run)
            .unwrap_or_else(|| "unknown".to_string());
        if !self.config.output.overwrite {
            return Err(TrainError::Output {
                path: dir.clone(),
                problem: format!(
                    "holds the checkpoints of another run (run {other}, newest: step {step}); \
                     continue it with --resume, set another output.dir, or start over with \
                     --overwrite (output.overwrite = true), which moves them into a subfolder"
                ),
            });
        }
        if let Some(to) = set_aside(dir, None, &format!("replaced-{other}"))? {
            tracing::warn!(
                "output.overwrite: moved run {other}'s checkpoints and metrics to {}",
                to.display()
            );
        }
        Ok(())
    }

    /// The checkpoint `path` names, loaded: an explicit record is that record; a folder (or
    /// none: the output folder) is its newest checkpoint that verifies, older ones tried in turn.
    fn load_newest(&self, path: Option<PathBuf>) -> Result<(PathBuf, Restored<M>), TrainError> {
        let dir = self.config.output.dir.clone();
        let (candidates, explicit) = match path {
            Some(path) if path.is_dir() => (checkpoint_records(&path), false),
            Some(path) => (vec![(0, path)], true),
            None => (checkpoint_records(&dir), false),
        };
        let searched = dir.clone();
        if candidates.is_empty() {
            return Err(TrainError::Checkpoint {
                path: searched,
                problem: "no checkpoint to resume from (no step_*.json record)".into(),
            });
        }
        let mut problems = Vec::new();
        let mut restored = None;
        for (_, path) in candidates {
            let fresh = RecordOptimizer::new(optimizer_config(&self.config, self.model.policy()));
            match load_checkpoint(
                &path,
                self.model.clone(),
                fresh,
                &self.device.clone().inner(),
            ) {
                Ok(found) => {
                    restored = Some((path, found));
                    break;
                }
                Err(err @ TrainError::Checkpoint { .. }) if !explicit => {
                    tracing::warn!(
                        "cannot resume {}: {err}; trying the checkpoint before it",
                        path.display()
                    );
                    problems.push(err.to_string());
                }
                Err(err) => return Err(err),
            }
        }
        let Some((path, restored)) = restored else {
            return Err(TrainError::Checkpoint {
                path: searched,
                problem: format!("no checkpoint verifies: {}", problems.join("; ")),
            });
        };
        Ok((path, restored))
    }

    fn resume(&mut self, path: Option<PathBuf>) -> Result<(), TrainError> {
        let dir = self.config.output.dir.clone();
        let (path, restored) = self.load_newest(path)?;
        let position =
            restored
                .record
                .loader
                .first()
                .copied()
                .ok_or_else(|| TrainError::Checkpoint {
                    path: path.clone(),
                    problem: "the record has no data position".into(),
                })?;
        for note in resume_notes(
            &restored.record.config,
            &self.config,
            restored.record.step,
            Some(position),
        ) {
            tracing::warn!("resuming {}: {note}", path.display());
        }
        // Every rank's own position when the rank count is the one recorded (a rank that
        // wrapped round a shard's end before rank 0 is not at rank 0's position + r·B·T);
        // otherwise the new ranks start from rank 0's, r·B·T apart, as from the start.
        let loader = &restored.record.loader;
        match loader.get(self.sync.rank()) {
            Some(own) if loader.len() == self.sync.world_size() => self.train.seek(*own)?,
            _ => self.train.seek_from_rank0(position)?,
        }
        self.explain_changed_shards(&path, &restored.record.shards);
        if let Some(run) = restored.record.run.clone() {
            self.run_id = run;
        }
        *self.model = restored.model;
        self.optimizer = restored.optimizer;
        self.step = restored.record.step;
        if self.sync.is_leader() {
            // Later checkpoints would be what the next `--resume` continues: this run's future
            // starts here, so they go aside (kept, not deleted).
            let superseded = format!("superseded-after-step-{}", self.step);
            if let Some(to) = set_aside(&dir, Some(self.step), &superseded)? {
                tracing::warn!(
                    "resumed step {} of {}: moved the later checkpoints to {}",
                    self.step,
                    dir.display(),
                    to.display()
                );
            }
        }
        Ok(())
    }

    /// Warns when the training shards differ from those a checkpoint recorded: its data
    /// position then points into other tokens than the original run's.
    fn explain_changed_shards(&self, path: &std::path::Path, recorded: &[ShardIdentity]) {
        if recorded.is_empty() || recorded == self.shards {
            return;
        }
        let name = |s: &ShardIdentity| format!("{} ({} tokens)", s.file, s.tokens);
        let changed: Vec<String> = recorded
            .iter()
            .zip(&self.shards)
            .enumerate()
            .filter(|(_, (then, now))| then != now)
            .map(|(i, (then, now))| format!("shard {i} was {}, is {}", name(then), name(now)))
            .collect();
        let count = if recorded.len() == self.shards.len() {
            String::new()
        } else {
            format!(
                "{} shards then, {} now; ",
                recorded.len(),
                self.shards.len()
            )
        };
        tracing::warn!(
            "resuming {}: the training shards changed since the checkpoint ({count}{}): its \
             data position now points into other tokens, so the batches differ from the \
             original run's",
            path.display(),
            changed.join(", ")
        );
    }

    /// Adds a plugin; plugins are called in the order they were added.
    pub fn with_plugin(mut self, plugin: impl Plugin + 'static) -> Self {
        self.plugins.push(Box::new(plugin));
        self
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
            tokens += self.config.tokens_per_step();
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
        let step_tokens = (self.config.tokens_per_step() / self.config.train.ranks) as f64;
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
        let (micro, seq_len) = (self.config.micro_batch_size(), self.config.train.seq_len);
        let poison_loss = self.injected.poisons(NonFinite::Loss, self.step + 1);
        let windows = (0..accum_steps)
            .map(|_| self.train.next_window())
            .collect::<Result<Vec<_>, _>>()?;
        let windows: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
        let mut accumulator = GradientsAccumulator::new();
        let mut losses = Vec::with_capacity(accum_steps);
        for batch in Batch::from_windows(&windows, micro, seq_len, &self.device)? {
            let mut loss = self.model.forward(&batch)?;
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

    /// Mean validation loss over `eval.tokens` tokens from the start of the validation shards,
    /// computed without autodiff; each rank reads its slice and the means are averaged.
    pub fn evaluate(&mut self) -> Result<EvalStats, TrainError> {
        let (world, rank) = (self.sync.world_size(), self.sync.rank());
        let started = Instant::now();
        let (local, tokens) = validation_loss_of_rank(
            &self.model.valid(),
            &self.config,
            self.val_paths.clone(),
            &self.device.clone().inner(),
            (rank, world),
            &|| false,
        )?
        .expect("never abandoned");
        Ok(EvalStats {
            step: self.step,
            val_loss: self.sync.mean(local)?,
            tokens: tokens * world,
            tokens_per_sec: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        })
    }

    /// [`evaluate`](Self::evaluate), abandoned (`None`) when a plugin reports a stop request
    /// between two batches, with one rank only.
    fn evaluate_unless_stopped(&mut self) -> Result<Option<EvalStats>, TrainError> {
        let (world, rank) = (self.sync.world_size(), self.sync.rank());
        if world > 1 {
            return self.evaluate().map(Some);
        }
        let started = Instant::now();
        let plugins = &self.plugins;
        let Some((local, tokens)) = validation_loss_of_rank(
            &self.model.valid(),
            &self.config,
            self.val_paths.clone(),
            &self.device.clone().inner(),
            (rank, world),
            &|| plugins.iter().any(|p| p.stop_requested()),
        )?
        else {
            return Ok(None);
        };
        Ok(Some(EvalStats {
            step: self.step,
            val_loss: local,
            tokens,
            tokens_per_sec: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        }))
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

    /// Evaluates, tells the plugins, and samples when due; `false` when a stop request
    /// abandoned the evaluation (one rank alone: under several, the step's stop flag is shared
    /// before evaluation starts, so that no rank leaves the others in a collective).
    fn evaluate_and_report(&mut self) -> Result<bool, TrainError> {
        let Some(eval) = self.evaluate_unless_stopped()? else {
            tracing::warn!(step = self.step, "evaluation abandoned on a stop request");
            return Ok(false);
        };
        self.last_val_loss = Some(eval.val_loss);
        self.each(|p| p.on_eval(&eval))?;
        let every = self.config.eval.sample_every;
        let last = self.step == self.config.train.steps;
        if every > 0
            && (last || self.step.is_multiple_of(every))
            && let Some(sample) = self.sample()?
        {
            self.each(|p| p.on_sample(&sample))?;
        }
        Ok(true)
    }

    /// A sample of `eval.sample_tokens` tokens after `eval.sample_prompt` from the model as it
    /// is now (rank 0; `None` elsewhere and when samples are off).
    pub fn sample(&mut self) -> Result<Option<SampleStats>, TrainError> {
        let Some(samples) = &self.samples else {
            return Ok(None);
        };
        let options = GenerateOptions {
            max_tokens: self.config.eval.sample_tokens,
            sampling: Sampling {
                temperature: SAMPLE_TEMPERATURE,
                top_k: Some(SAMPLE_TOP_K),
                top_p: None,
                seed: self.config.train.seed,
            },
            stop_at_end_of_text: true,
            kv_cache: true,
        };
        let device = self.device.clone().inner();
        let model = inference_model(self.model.valid(), &device)?;
        let generation = generate(
            &model,
            samples.tokenizer.as_ref(),
            &samples.prompt,
            &options,
            &device,
            |_| {},
        )?;
        Ok(Some(SampleStats {
            step: self.step,
            prompt: self.config.eval.sample_prompt.clone(),
            tokens: generation.tokens.len(),
            tokens_per_sec: generation.tokens_per_sec(),
            text: generation.text,
        }))
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

/// The config's model, initialised on `device` from the config's seed and converted to the
/// config's precision policy.
pub fn init_model(config: &TrainConfig, device: &Device) -> Result<Model, TrainError> {
    init_model_with_seed(config, device, config.train.seed)
}

/// [`init_model`] from another `seed`.
pub fn init_model_with_seed(
    config: &TrainConfig,
    device: &Device,
    seed: u64,
) -> Result<Model, TrainError> {
    init_model_of(config, device, seed)
}

/// [`init_model_with_seed`] as the model type `M` (refused unless the config names `M`'s
/// architecture).
///
/// Burn's random stream belongs to the device and so to the whole process: seeding it and
/// drawing the initial weights are one critical section, so that models built at the same time
/// on other threads (tests, a study's presets) cannot draw from the middle of this seed's
/// stream. Burn initialises a parameter when it is first read, so the section ends after the
/// policy has converted (and so read) every one.
pub fn init_model_of<M: LanguageModel>(
    config: &TrainConfig,
    device: &Device,
    seed: u64,
) -> Result<M, TrainError> {
    static DEVICE_STREAM: Mutex<()> = Mutex::new(());
    let (shape, policy) = (config.shape()?, config.train.precision);
    let _drawing = DEVICE_STREAM.lock().unwrap_or_else(PoisonError::into_inner);
    device.seed(seed);
    apply_policy(M::init(&shape, device)?, &policy, device)
        .map_err(|err| TrainError::Model(err.into()))
}

/// Refuses a config whose `train.ranks` is not the number of processes that run.
fn check_ranks(config: &TrainConfig, world_size: usize) -> Result<(), TrainError> {
    if config.train.ranks == world_size {
        return Ok(());
    }
    Err(TrainError::Config(ConfigError {
        key: "train.ranks".into(),
        problem: format!(
            "is {} but {world_size} process(es) run; launch with `cargo xtask train --ranks {}` \
             (mpirun), or set train.ranks={world_size}",
            config.train.ranks, config.train.ranks,
        ),
    }))
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

fn optimizer_config(config: &TrainConfig, policy: &PrecisionPolicy) -> RecordOptimizerConfig {
    let o = &config.optim;
    RecordOptimizerConfig {
        embedding_lr: o.embedding_lr,
        head_lr: o.head_lr,
        scalar_lr: o.scalar_lr,
        matrix_lr: o.matrix_lr,
        adam_betas: (o.adam_beta1, o.adam_beta2),
        adam_eps: o.adam_eps,
        muon_momentum: o.muon_momentum,
        ns_steps: o.ns_steps,
        ns_dtype: policy.matmul(),
        rounding: policy.update_rounding(),
        seed: config.train.seed,
        weight_decay: ParamGroup::ALL.map(|group| o.weight_decay.of(group)),
        frozen: o.freeze.clone(),
        matrix_optimizer: o.matrix_optimizer,
        ..RecordOptimizerConfig::default()
    }
}

/// Mean loss of `model` over `config.eval.tokens` tokens read from the start of `val_paths` in
/// the config's micro-batches (at least one), and the tokens read. Mean of per-batch means, as
/// the reference computes it.
pub fn validation_loss(
    model: &impl LanguageModel,
    config: &TrainConfig,
    val_paths: Vec<PathBuf>,
    device: &Device,
) -> Result<(f64, usize), TrainError> {
    validation_loss_of_rank(model, config, val_paths, device, (0, 1), &|| false)
        .map(|loss| loss.expect("never abandoned"))
}

/// [`validation_loss`] of rank `rank` of `world` ranks: the rank's slice of the same
/// `eval.tokens` tokens (the ranks' means average to the one-rank figure).
fn validation_loss_of_rank(
    model: &impl LanguageModel,
    config: &TrainConfig,
    val_paths: Vec<PathBuf>,
    device: &Device,
    (rank, world): (usize, usize),
    abandon: &dyn Fn() -> bool,
) -> Result<Option<(f64, usize)>, TrainError> {
    let (micro, seq_len) = (config.micro_batch_size(), config.train.seq_len);
    let mut loader = DistributedLoader::new(val_paths, micro, seq_len, rank, world)?
        .with_vocab(config.shape()?.vocab_size())?;
    let batches = (config.eval.tokens / (world * micro * seq_len)).max(1);
    let mut total = 0.0;
    for _ in 0..batches {
        if abandon() {
            return Ok(None);
        }
        let batch = Batch::from_window(&loader.next_window()?, micro, seq_len, device)?;
        total += model.forward(&batch)?.into_scalar::<f32>() as f64;
    }
    Ok(Some((total / batches as f64, batches * micro * seq_len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;
    use brainfloat_precision::Preset;
    use burn::tensor::FloatDType;

    /// Newton–Schulz iterates in the policy's product dtype, as the record's reference does:
    /// fp32 under `fp32`, bf16 under every preset whose products are bf16.
    #[test]
    fn newton_schulz_iterates_in_the_products_dtype() {
        let toml = include_str!("../../../configs/tiny.toml").to_string();
        let source = ConfigSource::Text {
            name: "tiny".into(),
            toml,
        };
        let config = TrainConfig::load(&source, &[]).unwrap();
        for preset in Preset::ALL {
            let policy = PrecisionPolicy::preset(preset);
            let expected = match preset {
                Preset::Fp32 => FloatDType::F32,
                _ => FloatDType::BF16,
            };
            assert_eq!(
                optimizer_config(&config, &policy).ns_dtype,
                expected,
                "{preset}"
            );
        }
    }
}
