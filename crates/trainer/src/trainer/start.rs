//! A trainer's start: the config checked against the ranks that run, the output folder claimed,
//! the model built (or its weights read) and the data opened; a fresh run or a resumed one.

use super::*;

/// How a [`Trainer`] is made: the config, what differs from a fresh run of one rank without
/// plugins, then [`build`](Self::build) on a device.
///
/// ```no_run
/// use brainfloat_trainer::plugins::LogPlugin;
/// use brainfloat_trainer::{ConfigSource, Start, TrainConfig, Trainer};
/// use burn::tensor::Device;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = TrainConfig::load(&ConfigSource::File("configs/tiny.toml".into()), &[])?;
/// let mut trainer = Trainer::builder(config)
///     .start(Start::Resume(None))
///     .plugin(LogPlugin::new(10))
///     .build(&Device::flex())?;
/// trainer.run()?;
/// # Ok(())
/// # }
/// ```
pub struct TrainerBuilder<M: LanguageModel = Gpt> {
    config: TrainConfig,
    start: Start,
    sync: Box<dyn Collectives>,
    plugins: Vec<Box<dyn Plugin>>,
    model: PhantomData<M>,
}

impl Trainer {
    /// A builder of a trainer of the record's model (the config's `model.arch` must be
    /// `record`; [`TrainerBuilder::new`] names another model type).
    pub fn builder(config: TrainConfig) -> TrainerBuilder {
        TrainerBuilder::new(config)
    }
}

impl<M: LanguageModel> TrainerBuilder<M> {
    /// A builder of a trainer of the model type `M` (the config's `model.arch` must be `M`'s
    /// architecture): a fresh start, one rank, no plugins.
    pub fn new(config: TrainConfig) -> Self {
        Self {
            config,
            start: Start::Fresh,
            sync: Box::new(LocalSync),
            plugins: Vec::new(),
            model: PhantomData,
        }
    }

    /// How the model starts (a fresh run unless set).
    pub fn start(self, start: Start) -> Self {
        Self { start, ..self }
    }

    /// One rank of a data-parallel run: this rank's slice of the data is read, gradients (fp32)
    /// and losses are averaged over the ranks of `sync` once per step, and checkpoints are
    /// written by rank 0 only. `train.ranks` must be the number of ranks.
    pub fn sync(self, sync: Box<dyn Collectives>) -> Self {
        Self { sync, ..self }
    }

    /// Adds a plugin; plugins are called in the order they were added.
    pub fn plugin(mut self, plugin: impl Plugin + 'static) -> Self {
        self.plugins.push(Box::new(plugin));
        self
    }

    /// Prepares the run on `device` (an autodiff device is made from it): checks the output
    /// folder is writable, builds the model the config names under its policy, opens and
    /// validates every shard, and starts the model as [`start`](Self::start) says.
    ///
    /// A rank that fails here, under several ranks, ends them all (`Collectives::abort`, after
    /// logging why): the others wait for it in a collective, and dropping its sync would
    /// finalize MPI, which waits for them in turn.
    pub fn build(self, device: &Device) -> Result<Trainer<M>, TrainError> {
        let Self {
            config,
            start,
            sync,
            plugins,
            ..
        } = self;
        let mut held = Some(sync);
        let started = Trainer::assemble(config, device, &mut held).and_then(|mut trainer| {
            trainer.plugins = plugins;
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
}

impl<M: LanguageModel> Trainer<M> {
    /// Builds the trainer; `held` keeps the sync until the trainer takes it, so that a failure
    /// before then leaves it with the caller.
    pub(super) fn assemble(
        config: TrainConfig,
        device: &Device,
        held: &mut Option<Box<dyn Collectives>>,
    ) -> Result<Self, TrainError> {
        let sync = held
            .as_deref()
            .expect("the sync is held until the trainer takes it");
        config.validate()?;
        check_ranks(&config, sync.world_size())?;
        let shape = config.shape();
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
        let model = init_model::<M>(&config, &device, config.train.seed)?;
        let cache = model.cache(&device);

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
            cache,
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
    pub(super) fn start(&mut self, start: Start) -> Result<(), TrainError> {
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
}

/// The config's model as the type `M` (refused unless the config names `M`'s architecture),
/// initialised on `device` from `seed` (the run's is `train.seed`) and converted to the config's
/// precision policy.
///
/// Burn's random stream belongs to the device and so to the whole process: seeding it and
/// drawing the initial weights are one critical section, so that models built at the same time
/// on other threads (tests, a study's presets) cannot draw from the middle of this seed's
/// stream. Burn initialises a parameter when it is first read, so the section ends after the
/// policy has converted (and so read) every one.
pub fn init_model<M: LanguageModel>(
    config: &TrainConfig,
    device: &Device,
    seed: u64,
) -> Result<M, TrainError> {
    static DEVICE_STREAM: Mutex<()> = Mutex::new(());
    let (shape, policy) = (config.shape(), config.train.precision);
    let _drawing = DEVICE_STREAM.lock().unwrap_or_else(PoisonError::into_inner);
    device.seed(seed);
    apply_policy(M::init(shape, device)?, &policy, device)
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
        let toml = include_str!("../../../../configs/tiny.toml").to_string();
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
